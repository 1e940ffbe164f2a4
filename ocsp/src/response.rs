//! (being written by the pre-signer work)
