from app.simulator.cli import main

main()
