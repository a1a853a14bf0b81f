// Module TunnelTestSupport: see STYLE.md for its job.
