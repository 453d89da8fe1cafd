from batch_cancel.cli import main

main()
