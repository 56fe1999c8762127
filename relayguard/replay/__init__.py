"""Test mode: replay a queue against scripted upstreams on a virtual clock.

Only the clock and the upstream are simulated; the queue manager, scheduler,
policy engine and bounce builder are the server's own.

- scenario.py       scenario files (TOML) → windows of scripted replies
- upstream.py       the simulated upstream: a `sender` answering per the scenario
- inputs.py         spool / .eml / mbox / Maildir input; postfix_queue.py: Postfix
- driver.py         the replay: the delivery round on a heap of events, memory spool
- stats.py          what a replay measured → the result document
- runner.py         prepare and run one or two policies; the JSON
- terminal.py, report_html.py, svg.py   the summary, the progress bar, the HTML page
- testmode.py       `serve --test-mode`: the live relay delivering to a capture
- cli.py            `relayguard replay` and the serve options
"""
