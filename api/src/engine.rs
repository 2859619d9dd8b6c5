//! Glue to dfw::crd and the dfw engine. TEMPORARY stand-in until both are merged into main:
//! parsing reports that no parser is built in, and the engine accepts everything.

use crate::realized::{Desired, DocumentError, EngineChange, ParsedDocument};
use crate::types::Document;

/// The engine's realized snapshot.
pub type Snapshot = ();

/// The live engine the controller mutates under its lock.
pub struct Live;

impl Live {
    /// A fresh engine holding `desired` (start-up, and dry-runs on a throwaway engine).
    pub fn build(_desired: &Desired) -> Result<Self, String> {
        Ok(Self)
    }

    /// Applies a change; on error nothing changed.
    pub fn apply(&mut self, _change: &EngineChange) -> Result<(), String> {
        Ok(())
    }

    pub fn snapshot(&mut self) -> Snapshot {}
}

pub fn parse_document(
    doc: &Document,
    _desired: &Desired,
) -> Result<ParsedDocument, Vec<DocumentError>> {
    Err(vec![DocumentError {
        file: doc.file.clone(),
        line: doc.line,
        column: None,
        field: None,
        message: "no CRD parser in this build".into(),
    }])
}
