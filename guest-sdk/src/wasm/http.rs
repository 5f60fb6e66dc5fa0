//! One HTTP request through `wasi:http/outgoing-handler` (the `wasip2`
//! crate's bindings): headers, body written in chunks, the response read
//! in full. The host's policy decides whether it goes out at all.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method as WasiMethod, OutgoingBody, OutgoingRequest,
    RequestOptions, Scheme,
};
use wasip2::io::streams::StreamError;

use crate::http::{HttpError, Method, Request, Response, split_url};

/// Bytes written to the request body per call.
const CHUNK: usize = 4096;
/// Bytes asked for per read of the response body.
const READ: u64 = 64 << 10;

pub(crate) fn send(request: &Request) -> Result<Response, HttpError> {
    let (scheme, authority, path) = split_url(&request.url)?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => {
            return Err(HttpError::Invalid(format!(
                "{}: scheme {other:?} (http or https)",
                request.url
            )));
        }
    };
    let mut entries: Vec<(String, Vec<u8>)> = request
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
        .collect();
    // A known length, so the body is not sent chunked.
    if !request.body.is_empty() && request.header("content-length").is_none() {
        entries.push((
            "content-length".into(),
            request.body.len().to_string().into_bytes(),
        ));
    }
    let headers = Fields::from_list(&entries)
        .map_err(|e| HttpError::Invalid(format!("{}: headers: {e:?}", request.url)))?;
    let req = OutgoingRequest::new(headers);
    let invalid = |what: &str| HttpError::Invalid(format!("{}: {what}", request.url));
    req.set_method(&method(request.method))
        .map_err(|()| invalid("method"))?;
    req.set_scheme(Some(&scheme))
        .map_err(|()| invalid("scheme"))?;
    req.set_authority(Some(authority))
        .map_err(|()| invalid("authority"))?;
    req.set_path_with_query(Some(path))
        .map_err(|()| invalid("path"))?;
    let body = req.body().map_err(|()| invalid("body"))?;
    let options = request.timeout_ms.map(|ms| {
        let o = RequestOptions::new();
        let ns = Some(ms.saturating_mul(1_000_000));
        // A host that does not support one of these ignores it; the host's
        // own cap (http_timeout_ms) applies either way.
        let _ = o.set_connect_timeout(ns);
        let _ = o.set_first_byte_timeout(ns);
        let _ = o.set_between_bytes_timeout(ns);
        o
    });
    let future = outgoing_handler::handle(req, options).map_err(|c| error(&request.url, c))?;

    // Write the body; a refused request shows through the response future.
    let written = write_body(body, &request.body);

    let response = loop {
        match future.get() {
            Some(r) => break r,
            None => future.subscribe().block(),
        }
    };
    let response = response
        .map_err(|()| HttpError::Protocol(format!("{}: response taken twice", request.url)))?
        .map_err(|c| error(&request.url, c))?;
    written?;
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let incoming = response
        .consume()
        .map_err(|()| HttpError::Protocol(format!("{}: body taken twice", request.url)))?;
    let mut bytes = Vec::new();
    {
        let stream = incoming
            .stream()
            .map_err(|()| HttpError::Protocol(format!("{}: body stream", request.url)))?;
        loop {
            match stream.blocking_read(READ) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(match wasip2::http::types::http_error_code(&e) {
                        Some(code) => error(&request.url, code),
                        None => HttpError::Connect(format!(
                            "{}: reading the body: {}",
                            request.url,
                            e.to_debug_string()
                        )),
                    });
                }
            }
        }
    }
    drop(IncomingBody::finish(incoming));
    Ok(Response {
        status,
        headers,
        body: bytes,
    })
}

fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), HttpError> {
    let failed = |e| HttpError::Connect(format!("writing the request body: {e:?}"));
    {
        let out = body.write().map_err(|()| failed("no stream"))?;
        for chunk in bytes.chunks(CHUNK) {
            out.blocking_write_and_flush(chunk)
                .map_err(|e| failed(stream_error(&e)))?;
        }
    }
    OutgoingBody::finish(body, None)
        .map_err(|c| HttpError::Protocol(format!("finishing the request body: {c:?}")))
}

fn stream_error(e: &StreamError) -> &'static str {
    match e {
        StreamError::Closed => "closed",
        StreamError::LastOperationFailed(_) => "failed",
    }
}

fn method(m: Method) -> WasiMethod {
    match m {
        Method::Get => WasiMethod::Get,
        Method::Head => WasiMethod::Head,
        Method::Post => WasiMethod::Post,
        Method::Put => WasiMethod::Put,
        Method::Patch => WasiMethod::Patch,
        Method::Delete => WasiMethod::Delete,
    }
}

fn error(url: &str, code: ErrorCode) -> HttpError {
    let m = format!("{url}: {code:?}");
    match code {
        ErrorCode::HttpRequestDenied => HttpError::Denied(m),
        ErrorCode::DnsTimeout
        | ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::HttpResponseTimeout => HttpError::Timeout(m),
        ErrorCode::DnsError(_)
        | ErrorCode::DestinationNotFound
        | ErrorCode::DestinationUnavailable
        | ErrorCode::DestinationIpUnroutable
        | ErrorCode::ConnectionRefused
        | ErrorCode::ConnectionTerminated
        | ErrorCode::ConnectionLimitReached
        | ErrorCode::HttpResponseIncomplete => HttpError::Connect(m),
        ErrorCode::DestinationIpProhibited => HttpError::Denied(m),
        ErrorCode::HttpResponseBodySize(_) => HttpError::TooLarge(m),
        ErrorCode::HttpRequestUriInvalid | ErrorCode::HttpRequestMethodInvalid => {
            HttpError::Invalid(m)
        }
        _ => HttpError::Protocol(m),
    }
}
