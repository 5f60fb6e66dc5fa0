//! Host-side bindings generated from `wit/messaging.wit` (world `plugin`).
//! Only `state.get` is async (it may read the database); every other import
//! works on memory.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: {
        "jasper:messaging/state.get": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

pub use exports::jasper::messaging::handler::HandleError;
pub use jasper::messaging::types::{Envelope as WitEnvelope, ScheduleTime, SendError, SendOptions};
