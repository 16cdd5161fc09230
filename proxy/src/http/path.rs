//! Request path normalisation before routing, as the connection manager's `normalize_path`
//! (RFC 3986 dot-segment removal; backslashes become slashes), `merge_slashes` and
//! `path_with_escaped_slashes_action` do in Envoy. Routing on an unnormalised path would let
//! `/public/../admin` slip past a `/admin` rule.

/// What to do with `%2F` / `%5C` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    #[default]
    Keep,
    /// 400.
    Reject,
    /// Decode them, then normalise (Envoy's UNESCAPE_AND_FORWARD; UNESCAPE_AND_REDIRECT
    /// forwards the same way here).
    Unescape,
}

/// Path settings of a connection manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathOptions {
    pub normalize: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl PathOptions {
    pub fn is_noop(&self) -> bool {
        !self.normalize && !self.merge_slashes && self.escaped_slashes == EscapedSlashes::Keep
    }
}

/// A path Envoy refuses (escaped slashes under REJECT_REQUEST): answered with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("path contains escaped slashes")]
pub struct Rejected;

/// The normalised path (query kept as is), or `Rejected` for a request Envoy answers with 400.
pub fn normalize(path_and_query: &str, o: PathOptions) -> Result<String, Rejected> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => (&path_and_query[..i], &path_and_query[i..]),
        None => (path_and_query, ""),
    };
    if !path.starts_with('/') {
        // Only origin-form paths are normalised (CONNECT authority-form and `*` are left alone).
        return Ok(path_and_query.to_string());
    }
    let mut p = path.to_string();
    let has_escaped = |s: &str| {
        let l = s.to_ascii_lowercase();
        l.contains("%2f") || l.contains("%5c")
    };
    match o.escaped_slashes {
        EscapedSlashes::Keep => {}
        EscapedSlashes::Reject if has_escaped(&p) => return Err(Rejected),
        EscapedSlashes::Reject => {}
        EscapedSlashes::Unescape => {
            p = p
                .replace("%2F", "/")
                .replace("%2f", "/")
                .replace("%5C", "\\")
                .replace("%5c", "\\");
        }
    }
    if o.normalize {
        p = p.replace('\\', "/");
        p = remove_dot_segments(&p);
    }
    if o.merge_slashes {
        let mut out = String::with_capacity(p.len());
        let mut prev_slash = false;
        for c in p.chars() {
            if c == '/' && prev_slash {
                continue;
            }
            prev_slash = c == '/';
            out.push(c);
        }
        p = out;
    }
    Ok(p + query)
}

/// RFC 3986 section 5.2.4, for absolute paths.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let n = segments.len();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == n;
        match *seg {
            "." | "%2e" | "%2E" => {
                if last {
                    out.push("");
                }
            }
            ".." | "%2e%2e" | "%2E%2E" | ".%2e" | "%2e." | ".%2E" | "%2E." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: PathOptions = PathOptions {
        normalize: true,
        merge_slashes: false,
        escaped_slashes: EscapedSlashes::Keep,
    };

    #[test]
    fn dot_segments() {
        assert_eq!(normalize("/a/b/../c", N).unwrap(), "/a/c");
        assert_eq!(
            normalize("/public/../admin?x=/../", N).unwrap(),
            "/admin?x=/../"
        );
        assert_eq!(normalize("/../../x", N).unwrap(), "/x");
        assert_eq!(normalize("/a/./b/.", N).unwrap(), "/a/b/");
        assert_eq!(normalize("/a/..", N).unwrap(), "/");
        assert_eq!(normalize("/a\\..\\b", N).unwrap(), "/b");
        assert_eq!(normalize("/a/%2e%2e/b", N).unwrap(), "/b");
        assert_eq!(normalize("/plain/path", N).unwrap(), "/plain/path");
    }

    #[test]
    fn slashes() {
        let m = PathOptions {
            merge_slashes: true,
            ..Default::default()
        };
        assert_eq!(normalize("//a///b/", m).unwrap(), "/a/b/");
        let r = PathOptions {
            escaped_slashes: EscapedSlashes::Reject,
            ..Default::default()
        };
        assert!(normalize("/a%2Fb", r).is_err());
        assert_eq!(normalize("/ab", r).unwrap(), "/ab");
        let u = PathOptions {
            normalize: true,
            escaped_slashes: EscapedSlashes::Unescape,
            ..Default::default()
        };
        assert_eq!(normalize("/a%2F..%2Fadmin", u).unwrap(), "/admin");
    }
}
