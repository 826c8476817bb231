//! The resolver host's typed errors, one variant per failure, each in one
//! [`FailureClass`] (the counter it is counted under).

use isthmus_core::merge::FailureClass;

/// Why loading or running a resolver failed. Whatever the variant, no
/// sibling is lost: the caller keeps the set as it was.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolverError {
    /// The module is larger than `module_bytes_max`.
    #[error("module of {bytes} bytes exceeds the limit of {max_bytes} bytes")]
    ModuleTooLarge {
        /// Size of the module.
        bytes: usize,
        /// Configured `module_bytes_max`.
        max_bytes: usize,
    },
    /// The bytes are not a valid core WebAssembly module.
    #[error("invalid module: {reason}")]
    InvalidModule {
        /// What is wrong with it.
        reason: String,
    },
    /// Compiling took longer than `compile_deadline`.
    #[error("module did not compile within {deadline_ms} ms")]
    CompileTimeout {
        /// Configured deadline in milliseconds.
        deadline_ms: u64,
    },
    /// The module imports something other than the log function
    /// (`isthmus::log`, of type `(i32, i32) -> ()`), the one import allowed.
    #[error(
        "module imports {module}::{name}; resolvers may import only isthmus::log of type (i32, i32) -> () (no WASI)"
    )]
    ImportNotAllowed {
        /// Import module name (e.g. `wasi_snapshot_preview1`).
        module: String,
        /// Import field name.
        name: String,
    },
    /// A required ABI export is missing or has the wrong type.
    #[error("module lacks the ABI export `{name}` of type {expected}")]
    MissingExport {
        /// Export name.
        name: String,
        /// Expected type, e.g. `(i32) -> i32`.
        expected: String,
    },
    /// The module speaks another ABI version.
    #[error("module speaks resolver ABI version {found}, the host speaks {expected}")]
    AbiMismatch {
        /// The host's ABI version.
        expected: u32,
        /// What `isthmus_abi_version` returned.
        found: u32,
    },
    /// The guest refused to merge (returned an error of its own).
    #[error("resolver refused to merge: error {code}: {message}")]
    Guest {
        /// Resolver-defined code.
        code: u32,
        /// Resolver's message.
        message: String,
    },
    /// The guest trapped.
    #[error("resolver trapped: {message}")]
    Trap {
        /// The trap as wasmtime describes it.
        message: String,
    },
    /// The guest used its whole fuel budget.
    #[error("resolver ran out of fuel ({fuel} units)")]
    FuelExhausted {
        /// Configured `fuel_per_merge`.
        fuel: u64,
    },
    /// The guest ran past the wall-clock backstop.
    #[error("resolver ran past its {deadline_ms} ms deadline")]
    Deadline {
        /// Configured `merge_deadline` in milliseconds.
        deadline_ms: u64,
    },
    /// The guest tried to use more memory than allowed.
    #[error("resolver exceeded its memory cap of {memory_bytes_max} bytes")]
    MemoryLimit {
        /// Configured `memory_bytes_max`.
        memory_bytes_max: usize,
    },
    /// The guest's output is out of bounds, too large, or does not decode.
    #[error("resolver returned bad output: {reason}")]
    BadOutput {
        /// What is wrong with it.
        reason: String,
    },
    /// The input is larger than `input_bytes_max`.
    #[error("merge input of {bytes} bytes exceeds the limit of {max_bytes} bytes")]
    InputTooLarge {
        /// Encoded input size.
        bytes: usize,
        /// Configured `input_bytes_max`.
        max_bytes: usize,
    },
    /// The host could not run the merge now (e.g. every pool slot busy).
    #[error("resolver host unavailable: {reason}")]
    Unavailable {
        /// What went wrong.
        reason: String,
    },
}

impl ResolverError {
    /// The failure class this error is counted under.
    pub fn class(&self) -> FailureClass {
        match self {
            ResolverError::ModuleTooLarge { .. }
            | ResolverError::InvalidModule { .. }
            | ResolverError::CompileTimeout { .. }
            | ResolverError::ImportNotAllowed { .. } => FailureClass::InvalidModule,
            ResolverError::MissingExport { .. } | ResolverError::AbiMismatch { .. } => {
                FailureClass::AbiMismatch
            }
            ResolverError::Guest { .. } => FailureClass::GuestError,
            ResolverError::Trap { .. } => FailureClass::Trap,
            ResolverError::FuelExhausted { .. } => FailureClass::FuelExhausted,
            ResolverError::Deadline { .. } => FailureClass::Deadline,
            ResolverError::MemoryLimit { .. } => FailureClass::MemoryLimit,
            ResolverError::BadOutput { .. } => FailureClass::BadOutput,
            ResolverError::InputTooLarge { .. } | ResolverError::Unavailable { .. } => {
                FailureClass::Unavailable
            }
        }
    }
}
