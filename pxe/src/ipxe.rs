//! iPXE scripts (being written).
