import os

# The watchdog is background work: at start it must not take CPU from the programs users
# wait for (four interpreters importing at once on two cores).
os.nice(10)

from halton_watchdog.main import main  # noqa: E402

main()
