// Module TunnelIO: see STYLE.md for its job.
