//! A request's header block, decoded, as an `http::Request` head (RFC 9113 §8.3.1): the
//! pseudo-header fields before the others, each once, the ones a request needs present, names
//! in lowercase, no connection-specific fields. A block that breaks a rule is a malformed
//! request, answered with a stream error. Trailers follow the same rules without
//! pseudo-header fields.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, COOKIE};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};

use super::hpack::{Field, Known};

/// What a header block is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Request,
    Response,
    Trailers,
}

/// Collects a request's (or a response's) fields as they are decoded.
#[derive(Default)]
pub(crate) struct Head {
    status: Option<Bytes>,
    method: Option<Bytes>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    protocol: Option<Bytes>,
    headers: HeaderMap,
    cookies: Option<BytesMut>,
    regular_seen: bool,
    malformed: Option<&'static str>,
}

/// Whether a field name may appear in HTTP/2 (connection-specific ones may not; RFC 9113
/// §8.2.2), and `te` only as `trailers`.
fn connection_specific(name: &HeaderName, value: &[u8]) -> bool {
    match name.as_str() {
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" => true,
        "te" => !value.eq_ignore_ascii_case(b"trailers"),
        _ => false,
    }
}

impl Head {
    pub(crate) fn with_capacity(n: usize) -> Head {
        Head {
            headers: if n == 0 {
                HeaderMap::new()
            } else {
                crate::http::wire::take_header_map(n)
            },
            ..Head::default()
        }
    }

    fn bad(&mut self, why: &'static str) {
        self.malformed.get_or_insert(why);
    }

    /// One decoded field.
    pub(crate) fn field(&mut self, f: Field<'_>, known: Known<'_>, kind: Kind) {
        let trailers = kind == Kind::Trailers;
        if self.malformed.is_some() {
            return;
        }
        let name = &f.name[..];
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular_seen {
                return self.bad("pseudo-header field after a regular field");
            }
            if trailers {
                return self.bad("pseudo-header field in trailers");
            }
            let slot = match (pseudo, kind) {
                (b"status", Kind::Response) => &mut self.status,
                (_, Kind::Response) => return self.bad("request pseudo-header in a response"),
                (b"status", _) => return self.bad("response pseudo-header in a request"),
                (b"method", _) => &mut self.method,
                (b"scheme", _) => &mut self.scheme,
                (b"authority", _) => &mut self.authority,
                (b"path", _) => &mut self.path,
                (b"protocol", _) => &mut self.protocol,
                _ => return self.bad("unknown pseudo-header field"),
            };
            if slot.is_some() {
                return self.bad("pseudo-header field repeated");
            }
            *slot = Some(f.value.clone());
            return;
        }
        self.regular_seen = true;
        // A name from either HPACK table comes parsed (and checked) already.
        let hn = match known.name {
            Some(hn) => hn.clone(),
            None => {
                if name.iter().any(u8::is_ascii_uppercase) {
                    return self.bad("uppercase field name");
                }
                let Ok(hn) = HeaderName::from_bytes(name) else {
                    return self.bad("invalid field name");
                };
                hn
            }
        };
        if connection_specific(&hn, f.value) {
            return self.bad("connection-specific field");
        }
        if hn == COOKIE && kind == Kind::Request {
            // Cookie crumbs are joined into one field for HTTP/1.1 upstreams (RFC 9113 §8.2.3).
            match &mut self.cookies {
                Some(c) => {
                    c.extend_from_slice(b"; ");
                    c.extend_from_slice(f.value);
                }
                None => self.cookies = Some(BytesMut::from(&f.value[..])),
            }
            return;
        }
        let mut value = match known.value {
            Some(v) => v.clone(),
            None => match HeaderValue::from_maybe_shared(f.value.clone()) {
                Ok(v) => v,
                Err(_) => return self.bad("invalid field value"),
            },
        };
        if f.never_indexed {
            value.set_sensitive(true);
        }
        self.headers.append(hn, value);
    }

    /// The request head, or why it is malformed.
    pub(crate) fn into_request(mut self) -> Result<(Parts, Option<u64>), &'static str> {
        if let Some(why) = self.malformed {
            return Err(why);
        }
        if let Some(c) = self.cookies.take() {
            match HeaderValue::from_maybe_shared(c.freeze()) {
                Ok(v) => {
                    self.headers.insert(COOKIE, v);
                }
                Err(_) => return Err("invalid field value"),
            }
        }
        let method = self.method.ok_or("no :method")?;
        let method = Method::from_bytes(&method).map_err(|_| "invalid :method")?;
        if self.protocol.is_some() {
            // Extended CONNECT (RFC 8441) is not offered (no SETTINGS_ENABLE_CONNECT_PROTOCOL).
            return Err(":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL");
        }
        let uri = if method == Method::CONNECT {
            if self.scheme.is_some() || self.path.is_some() {
                return Err("CONNECT with :scheme or :path");
            }
            let authority = self.authority.ok_or("CONNECT without :authority")?;
            let authority =
                Authority::from_maybe_shared(authority).map_err(|_| "invalid :authority")?;
            Uri::from(authority)
        } else {
            let scheme = self.scheme.ok_or("no :scheme")?;
            let path = self.path.ok_or("no :path")?;
            if path.is_empty() {
                return Err("empty :path");
            }
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(match &scheme[..] {
                b"http" => Scheme::HTTP,
                b"https" => Scheme::HTTPS,
                _ => Scheme::try_from(&scheme[..]).map_err(|_| "invalid :scheme")?,
            });
            if let Some(a) = self.authority {
                parts.authority =
                    Some(Authority::from_maybe_shared(a).map_err(|_| "invalid :authority")?);
            }
            parts.path_and_query =
                Some(PathAndQuery::from_maybe_shared(path).map_err(|_| "invalid :path")?);
            Uri::from_parts(parts).map_err(|_| "invalid request target")?
        };
        let content_length = match self.headers.get(CONTENT_LENGTH) {
            None => None,
            Some(v) => {
                let n = std::str::from_utf8(v.as_bytes())
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or("invalid content-length")?;
                let mut all = self.headers.get_all(CONTENT_LENGTH).iter();
                all.next();
                if all.any(|o| o != v) {
                    return Err("conflicting content-length");
                }
                Some(n)
            }
        };
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = method;
        parts.uri = uri;
        parts.version = Version::HTTP_2;
        parts.headers = self.headers;
        Ok((parts, content_length))
    }

    /// A response head: its status and fields, or why it is malformed.
    pub(crate) fn into_response(self) -> Result<(StatusCode, HeaderMap), &'static str> {
        if let Some(why) = self.malformed {
            return Err(why);
        }
        let status = self.status.ok_or("no :status")?;
        let status = StatusCode::from_bytes(&status).map_err(|_| "invalid :status")?;
        Ok((status, self.headers))
    }

    /// The trailer section, or why it is malformed.
    pub(crate) fn into_trailers(self) -> Result<HeaderMap, &'static str> {
        match self.malformed {
            Some(why) => Err(why),
            None => Ok(self.headers),
        }
    }
}
