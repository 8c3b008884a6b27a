//! The one place that generates host bindings for the `shoal:plugin` WIT package, from the
//! repository's root `wit/`: [`v0_3`] for the current world (`wit/world.wit`), [`v0_2`] and
//! [`v0_1`] for the earlier worlds (`wit/deps/shoal-plugin-0.2.0/`, `-0.1.0/`), which stay
//! linked so components built against them keep loading. Every version shares 0.1.0's `types`
//! and `host` interfaces (the same imports, one implementation, one set of generated types);
//! 0.2.0 changed `on-message`'s message, 0.3.0 added `on-batch` and the `batch.answer` import
//! (linked by hand in `engine`, because answering needs the store, not only its data).
//! Everything else in the crate imports from here and converts at the edge into the host-side
//! types of [`crate::message`].
//!
//! `Borrowing` ownership makes the exported functions take their arguments as `&str`/`&[u8]`,
//! so a call lowers the host's message straight into guest memory without cloning it first.
//! Results (`list<action>`) and host-import arguments stay owned.

// The generated glue builds typed function handles with `TypedFunc::new_unchecked` after it
// has type-checked the exports once (`RulePluginIndices::new`); that `unsafe` is wasmtime's.
#![allow(unsafe_code, clippy::all)]

/// World `shoal:plugin/rule-plugin@0.1.0`: the host imports, the shared types, and the 0.1.0
/// exports.
pub(crate) mod v0_1 {
    wasmtime::component::bindgen!({
        world: "shoal:plugin/rule-plugin@0.1.0",
        path: "../../wit",
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

/// World `shoal:plugin/rule-plugin@0.2.0`: the 0.2.0 exports (the packed message); its
/// imports and types are [`v0_1`]'s.
pub(crate) mod v0_2 {
    wasmtime::component::bindgen!({
        world: "shoal:plugin/rule-plugin@0.2.0",
        path: "../../wit",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "shoal:plugin/types@0.1.0": super::v0_1::shoal::plugin0_1_0::types,
            "shoal:plugin/host@0.1.0": super::v0_1::shoal::plugin0_1_0::host,
        },
    });
}

/// World `shoal:plugin/rule-plugin@0.3.0`: 0.2.0's exports plus `on-batch`; its types are
/// [`v0_1`]'s and [`v0_2`]'s, and of its `batch` interface only the `header` record is used
/// (the `answer` import is linked by hand).
pub(crate) mod v0_3 {
    wasmtime::component::bindgen!({
        world: "shoal:plugin/rule-plugin@0.3.0",
        path: "../../wit",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "shoal:plugin/types@0.1.0": super::v0_1::shoal::plugin0_1_0::types,
            "shoal:plugin/host@0.1.0": super::v0_1::shoal::plugin0_1_0::host,
            "shoal:plugin/packed@0.2.0": super::v0_2::shoal::plugin0_2_0::packed,
        },
    });
}

pub(crate) use v0_1::shoal::plugin0_1_0::types as wit;
pub(crate) use v0_1::shoal::plugin0_1_0::{host as wit_host, types as wit_types};
pub(crate) use v0_2::shoal::plugin0_2_0::packed::Message as PackedMessage;
pub(crate) use v0_3::shoal::plugin0_3_0::batch::Header as BatchHeader;
