//! hsm-sim
