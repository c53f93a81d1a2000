//! Content-defined chunking: the FastCDC scanner lives in
//! [`levee_proto::chunker`], because the server chunks release root file
//! systems with it too (`levee release publish`, delta updates); the
//! backup engine uses it from here.

pub use levee_proto::chunker::*;
