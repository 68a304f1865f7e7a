from llamanet.cli import main

main()
