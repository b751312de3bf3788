//! API keys of OpenAI-compatible servers, kept in the platform's keyring
//! (Secret Service on Linux, the Keychain on macOS, the Credential Manager
//! on Windows) under the server's base URL — never in the settings file.
//! Where no keyring is available the key lives only as long as the window.

const SERVICE: &str = "spillway";

fn entry(url: &str) -> Result<keyring::Entry, String> {
    keyring::Entry::new(SERVICE, url.trim()).map_err(|e| {
        match (e, keyring::Entry::store_status()) {
            // Why the platform's store could not be opened says more.
            (keyring::Error::NoDefaultStore, Err(why)) => why.to_string(),
            (e, _) => e.to_string(),
        }
    })
}

/// Stores `key` for `url` (an empty key removes it). Err: no keyring is
/// available, with why.
pub fn store(url: &str, key: &str) -> Result<(), String> {
    let e = entry(url)?;
    if key.is_empty() {
        return match e.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(err) => Err(err.to_string()),
        };
    }
    e.set_password(key).map_err(|err| err.to_string())
}

/// The key stored for `url`, if any.
pub fn load(url: &str) -> Option<String> {
    if url.trim().is_empty() {
        return None;
    }
    entry(url).ok()?.get_password().ok()
}
