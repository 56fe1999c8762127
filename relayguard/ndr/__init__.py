"""Reports to senders: RFC 3464 NDRs, delay warnings and relayed notices, with their facts."""
