//! The lab-host shipper daemon (issue 3; not built yet).
