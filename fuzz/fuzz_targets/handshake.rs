//! Both sides of the handshake driven with made-up, replayed and
//! out-of-order messages (`jasper_host::transport::wire::fuzz_handshake`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    jasper_host::transport::wire::fuzz_handshake(data);
});
