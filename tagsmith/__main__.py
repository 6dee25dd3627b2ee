from tagsmith.cli import main

main()
