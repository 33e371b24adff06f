//! What the client hands updates to: [`Handler`] (encoded resources) and [`Typed`] (decoded
//! with prost); a [`Rejection`] names a resource a handler refused, for the NACK.

use std::marker::PhantomData;

/// A resource a handler did not apply, and why (sent back in the NACK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Resource name.
    pub name: String,
    /// Reason.
    pub reason: String,
}

/// What to do with one resource type's updates.
pub trait Handler: Send + Sync + 'static {
    /// The type URL subscribed to.
    fn type_url(&self) -> &'static str;
    /// Applies one update: resources added or changed (name, encoded message) and names
    /// removed. Returns the resources it rejected; everything else is applied.
    fn apply(&self, upserts: Vec<(String, Vec<u8>)>, removes: Vec<String>) -> Vec<Rejection>;
}

/// A [`Handler`] for messages of type `T`: resources that do not decode are rejected, the
/// rest go to `f` decoded.
pub struct Typed<T, F> {
    type_url: &'static str,
    f: F,
    _t: PhantomData<fn() -> T>,
}

impl<T, F> Typed<T, F>
where
    T: prost::Message + Default,
    F: Fn(Vec<(String, T)>, Vec<String>) -> Vec<Rejection> + Send + Sync + 'static,
{
    /// A typed handler for `type_url`.
    pub fn new(type_url: &'static str, f: F) -> Typed<T, F> {
        Typed {
            type_url,
            f,
            _t: PhantomData,
        }
    }
}

impl<T, F> Handler for Typed<T, F>
where
    T: prost::Message + Default + 'static,
    F: Fn(Vec<(String, T)>, Vec<String>) -> Vec<Rejection> + Send + Sync + 'static,
{
    fn type_url(&self) -> &'static str {
        self.type_url
    }

    fn apply(&self, upserts: Vec<(String, Vec<u8>)>, removes: Vec<String>) -> Vec<Rejection> {
        let mut rejected = Vec::new();
        let mut decoded = Vec::with_capacity(upserts.len());
        for (name, bytes) in upserts {
            match T::decode(bytes.as_slice()) {
                Ok(m) => decoded.push((name, m)),
                Err(e) => rejected.push(Rejection {
                    name,
                    reason: format!("cannot decode as {}: {e}", self.type_url),
                }),
            }
        }
        rejected.extend((self.f)(decoded, removes));
        rejected
    }
}
