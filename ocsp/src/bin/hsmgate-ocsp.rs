//! `hsmgate-ocsp`: the OCSP responder, the pre-signer, and the commands that feed them.
//! (Subcommands are added by the responder and pre-signer work.)

fn main() {}
