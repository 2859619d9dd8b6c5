//! vdfw policy engine.
