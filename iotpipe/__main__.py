from iotpipe.cli import main

main()
