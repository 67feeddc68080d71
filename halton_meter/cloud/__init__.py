"""Cloud sync: ships stored rows to Halton Meter Cloud, exactly once on the server.

- ``state``   the state machine (ACTIVE / PAUSED / DISCONNECTED) and cloud-state.json
- ``client``  httpx (trust_env=False, explicit timeouts, ``[cloud] proxy``), certifi roots
              plus ``[upstream] ca_bundle``; the classification of every answer
- ``rows``    rows after the cursor, in the store's ``seq`` order
- ``sync``    ``CloudSync(home, config)``: ``sync_once()`` and ``run_forever(stop_event)``
- ``account`` what the ``halton-meter cloud`` commands do (connect, pause, resume, status)

The daemon runs the loop in a thread::

    from halton_meter.cloud.sync import CloudSync
    stop = threading.Event()
    threading.Thread(target=CloudSync(home, config).run_forever, args=(stop,),
                     name="halton-cloud-sync", daemon=True).start()
"""

# Here, not in account: the CLI names it in --help without importing httpx.
TOKEN_ENV = "HALTON_METER_CLOUD_TOKEN"
