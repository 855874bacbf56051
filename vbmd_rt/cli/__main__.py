from vbmd_rt.cli import main

main()
