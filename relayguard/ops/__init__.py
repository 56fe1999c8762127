"""Operating the relay: the control socket, queue tools, metrics, systemd."""
