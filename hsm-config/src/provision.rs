//! SoftHSM2 provisioning for development and tests (filled in by the provisioning work).
