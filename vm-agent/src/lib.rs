//! The in-guest agent that will attest a VM's identity (SPIFFE SVIDs). Nothing is implemented yet.
