from halton_watchdog.main import main

main()
