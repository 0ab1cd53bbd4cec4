//! The HTTP server role of etcdbrctl.
