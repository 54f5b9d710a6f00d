//! Every runner→controller message decoded from bytes, then through the controller's
//! conversions at the gRPC edge: never a panic; what is kept is storable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((kind, bytes)) = data.split_first() else {
        return;
    };
    use controller::grpc::convert;
    match kind % 9 {
        0 => {
            let _ = proto::JoinRequest::decode(bytes);
        }
        1 => {
            let _ = proto::HelloRequest::decode(bytes);
        }
        2 => {
            if let Ok(up) = proto::SessionUp::decode(bytes) {
                let _ = format!("{up:?}");
            }
        }
        3 => {
            let _ = proto::LeaseRequest::decode(bytes);
        }
        4 => {
            if let Ok(r) = proto::StageRequest::decode(bytes) {
                let _ = convert::lease(r.lease.as_ref(), 1);
            }
        }
        5 => {
            if let Ok(r) = proto::AppendLogsRequest::decode(bytes) {
                let _ = convert::lease(r.lease.as_ref(), 1);
            }
        }
        6 => {
            if let Ok(r) = proto::BundleChunk::decode(bytes) {
                let _ = convert::lease(r.lease.as_ref(), 1);
            }
        }
        7 => {
            if let Ok(mut r) = proto::CompleteRequest::decode(bytes) {
                let _ = convert::lease(r.lease.as_ref(), 1);
                let _ = convert::outcome(r.outcome);
                for s in [&mut r.error, &mut r.summary, &mut r.verify_output] {
                    convert::storable(s);
                    assert!(!s.contains('\0'));
                }
                for j in [&r.context_json, &r.data_json] {
                    if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(j) {
                        convert::storable_json(&mut v);
                        assert!(!v.to_string().contains("\\u0000"));
                    }
                }
            }
        }
        _ => {
            let _ = proto::RenewCertificateRequest::decode(bytes);
        }
    }
});
