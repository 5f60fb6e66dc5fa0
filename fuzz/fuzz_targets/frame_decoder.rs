//! Arbitrary bytes through every frame and handshake decoder
//! (`jasper_host::transport::wire::fuzz_decode`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    jasper_host::transport::wire::fuzz_decode(data);
});
