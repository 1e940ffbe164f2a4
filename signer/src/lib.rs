//! The hsmgate signing gateway.
