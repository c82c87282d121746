from trace_platform.cli import main

main()
