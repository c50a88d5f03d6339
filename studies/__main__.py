from studies.cli import main

main()
