//! The one place that generates host bindings for the `shoal:plugin` WIT package, from the
//! repository's root `wit/`: [`v0_2`] for the current world (`wit/world.wit`) and [`v0_1`] for
//! the 0.1.0 world (`wit/deps/shoal-plugin-0.1.0/`), which stays linked so components built
//! against it keep loading. 0.2.0 reuses 0.1.0's `types` and `host` interfaces (the same
//! imports, one implementation, one set of generated types); only `on-message`'s message
//! differs. Everything else in the crate imports from here and converts at the edge into the
//! host-side types of [`crate::message`].
//!
//! `Borrowing` ownership makes the exported `on-message` take its message as `&str`/`&[u8]`,
//! so a call lowers the host's message straight into guest memory without cloning it first.
//! Results (`list<action>`) and host-import arguments stay owned.

// The generated glue builds typed function handles with `TypedFunc::new_unchecked` after it
// has type-checked the exports once (`RulePluginIndices::new`); that `unsafe` is wasmtime's.
#![allow(unsafe_code, clippy::all)]

/// World `shoal:plugin/rule-plugin@0.1.0`: the host imports, the shared types, and the 0.1.0
/// exports.
pub(crate) mod v0_1 {
    wasmtime::component::bindgen!({
        world: "rule-plugin",
        path: "../../wit/deps/shoal-plugin-0.1.0",
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

/// World `shoal:plugin/rule-plugin@0.2.0`: the 0.2.0 exports (the packed message); its
/// imports and types are [`v0_1`]'s.
pub(crate) mod v0_2 {
    wasmtime::component::bindgen!({
        world: "rule-plugin",
        path: "../../wit",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "shoal:plugin/types@0.1.0": super::v0_1::shoal::plugin::types,
            "shoal:plugin/host@0.1.0": super::v0_1::shoal::plugin::host,
        },
    });
}

pub(crate) use v0_1::shoal::plugin::types as wit;
pub(crate) use v0_1::shoal::plugin::{host as wit_host, types as wit_types};
pub(crate) use v0_2::shoal::plugin0_2_0::packed::Message as PackedMessage;
