from dlq_router.cli import main

main()
