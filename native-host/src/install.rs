//! Registering the host with browsers: writes (or removes) the native-messaging
//! host manifest where each browser looks for it.
//!
//! | browser  | user                                              | `--system`                                   |
//! |----------|---------------------------------------------------|----------------------------------------------|
//! | chrome   | `~/.config/google-chrome/NativeMessagingHosts/`   | `/etc/opt/chrome/native-messaging-hosts/`    |
//! | chromium | `~/.config/chromium/NativeMessagingHosts/`        | `/etc/chromium/native-messaging-hosts/`      |
//! | firefox  | `~/.mozilla/native-messaging-hosts/`              | `/usr/lib/mozilla/native-messaging-hosts/`   |
//!
//! `--user-data-dir DIR` (Chrome/Chromium) writes `DIR/NativeMessagingHosts/`, which
//! is where a browser started with that profile looks.

use std::path::{Path, PathBuf};

use serde_json::json;

/// The host's registered name.
pub const HOST_NAME: &str = "org.peercache.host";
/// The Chromium extension id fixed by the `key` in `manifest.json`.
pub const CHROMIUM_EXTENSION_ID: &str = "fmfjkafobffmfmdigggcgcdafihpelgn";
/// The Firefox add-on id from `browser_specific_settings.gecko.id`.
pub const FIREFOX_EXTENSION_ID: &str = "peercache@peercache.org";

/// A browser family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Browser {
    /// Google Chrome.
    Chrome,
    /// Chromium.
    Chromium,
    /// Firefox (and Firefox ESR).
    Firefox,
}

/// Where to register.
#[derive(Debug, Clone)]
pub enum Scope {
    /// The current user's default profile locations.
    User,
    /// System-wide (needs root).
    System,
    /// A custom Chrome/Chromium profile directory.
    UserDataDir(PathBuf),
}

/// Installation errors.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// `--user-data-dir` given for Firefox.
    #[error(
        "--user-data-dir applies to Chrome and Chromium; Firefox reads $HOME/.mozilla/native-messaging-hosts"
    )]
    UserDataDirForFirefox,
    /// No home directory.
    #[error("HOME is not set")]
    NoHome,
    /// The extension id is not valid for the browser.
    #[error("invalid extension id {0:?}")]
    BadExtensionId(String),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The directory the manifest goes to.
pub fn manifest_dir(browser: Browser, scope: &Scope) -> Result<PathBuf, InstallError> {
    let home = || {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .ok_or(InstallError::NoHome)
    };
    Ok(match (browser, scope) {
        (Browser::Firefox, Scope::UserDataDir(_)) => {
            return Err(InstallError::UserDataDirForFirefox);
        }
        (_, Scope::UserDataDir(dir)) => dir.join("NativeMessagingHosts"),
        (Browser::Chrome, Scope::User) => {
            home()?.join(".config/google-chrome/NativeMessagingHosts")
        }
        (Browser::Chromium, Scope::User) => home()?.join(".config/chromium/NativeMessagingHosts"),
        (Browser::Firefox, Scope::User) => home()?.join(".mozilla/native-messaging-hosts"),
        (Browser::Chrome, Scope::System) => PathBuf::from("/etc/opt/chrome/native-messaging-hosts"),
        (Browser::Chromium, Scope::System) => PathBuf::from("/etc/chromium/native-messaging-hosts"),
        (Browser::Firefox, Scope::System) => {
            PathBuf::from("/usr/lib/mozilla/native-messaging-hosts")
        }
    })
}

/// The manifest's JSON for `browser`, pointing at `host_path`.
pub fn manifest(
    browser: Browser,
    host_path: &Path,
    extension_id: &str,
) -> Result<serde_json::Value, InstallError> {
    let mut m = json!({
        "name": HOST_NAME,
        "description": "peercache native host: local gateway, cache and peer server",
        "path": host_path,
        "type": "stdio",
    });
    match browser {
        Browser::Chrome | Browser::Chromium => {
            if extension_id.len() != 32 || !extension_id.bytes().all(|b| (b'a'..=b'p').contains(&b))
            {
                return Err(InstallError::BadExtensionId(extension_id.to_string()));
            }
            m["allowed_origins"] = json!([format!("chrome-extension://{extension_id}/")]);
        }
        Browser::Firefox => {
            if extension_id.is_empty() || extension_id.contains(['/', '"', ' ']) {
                return Err(InstallError::BadExtensionId(extension_id.to_string()));
            }
            m["allowed_extensions"] = json!([extension_id]);
        }
    }
    Ok(m)
}

/// Writes the manifest; returns its path.
pub fn install(
    browser: Browser,
    scope: &Scope,
    host_path: &Path,
    extension_id: Option<&str>,
) -> Result<PathBuf, InstallError> {
    let id = extension_id.unwrap_or(match browser {
        Browser::Firefox => FIREFOX_EXTENSION_ID,
        _ => CHROMIUM_EXTENSION_ID,
    });
    let body = manifest(browser, host_path, id)?;
    let dir = manifest_dir(browser, scope)?;
    std::fs::create_dir_all(&dir).map_err(|source| InstallError::Io {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(format!("{HOST_NAME}.json"));
    let text = serde_json::to_vec_pretty(&body).unwrap_or_default();
    crate::cache::write_atomically(&path, &text).map_err(|source| InstallError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Removes the manifest; returns its path if one was there.
pub fn uninstall(browser: Browser, scope: &Scope) -> Result<Option<PathBuf>, InstallError> {
    let path = manifest_dir(browser, scope)?.join(format!("{HOST_NAME}.json"));
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(Some(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(InstallError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_name_the_extension() {
        let m = manifest(
            Browser::Chromium,
            Path::new("/usr/bin/peercache-host"),
            CHROMIUM_EXTENSION_ID,
        )
        .unwrap();
        assert_eq!(
            m["allowed_origins"][0],
            format!("chrome-extension://{CHROMIUM_EXTENSION_ID}/")
        );
        let f = manifest(Browser::Firefox, Path::new("/x"), FIREFOX_EXTENSION_ID).unwrap();
        assert_eq!(f["allowed_extensions"][0], FIREFOX_EXTENSION_ID);
        assert!(manifest(Browser::Chrome, Path::new("/x"), "short").is_err());
        assert!(manifest_dir(Browser::Firefox, &Scope::UserDataDir("/p".into())).is_err());
    }

    #[test]
    fn install_and_uninstall_in_a_profile() {
        let dir = std::env::temp_dir().join(format!("pc-install-{}", rand::random::<u64>()));
        let scope = Scope::UserDataDir(dir.clone());
        let path = install(Browser::Chromium, &scope, Path::new("/bin/true"), None).unwrap();
        assert_eq!(
            path,
            dir.join("NativeMessagingHosts/org.peercache.host.json")
        );
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["path"], "/bin/true");
        assert_eq!(
            uninstall(Browser::Chromium, &scope).unwrap(),
            Some(path.clone())
        );
        assert!(!path.exists());
        assert_eq!(uninstall(Browser::Chromium, &scope).unwrap(), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
