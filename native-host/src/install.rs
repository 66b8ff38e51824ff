//! Registering the host with browsers: writes (or removes) the native-messaging
//! host manifest where each browser looks for it, on Linux, macOS and Windows.
//!
//! Where each browser looks (per OS, per user or system-wide, and on Windows the
//! registry key pointing at the manifest) comes from the `native_messaging`
//! crate's browser table; this module chooses the browsers, the allowed
//! extension ids, and adds what the table lacks:
//! - `--user-data-dir DIR` (Chromium family): `DIR/NativeMessagingHosts/`, where
//!   a browser started with that profile looks;
//! - staging the system-wide manifests under a root directory, for packages
//!   (`.deb`, `.rpm`): `install --system --stage-root DIR`;
//! - browsers from Snap or Flatpak, whose sandbox keeps them from starting a
//!   host outside it: found, and told what to do instead.

use std::path::{Path, PathBuf};

use serde_json::json;

/// The host's registered name.
pub const HOST_NAME: &str = "org.peercache.host";
/// The manifest's description.
const DESCRIPTION: &str = "peercache native host: local gateway, cache and peer server";
/// The development id of the Chromium extension: fixed by the `key` in
/// `manifest.json`, which `dist/chromium/` (loaded unpacked) keeps.
pub const CHROMIUM_EXTENSION_ID: &str = "fmfjkafobffmfmdigggcgcdafihpelgn";
/// The id the Chrome Web Store gave the published extension (the store package
/// has no `key`, so the store chooses it). Set at build time with
/// `PEERCACHE_CHROME_STORE_ID`; absent until the extension is published.
pub const CHROMIUM_STORE_EXTENSION_ID: Option<&str> = option_env!("PEERCACHE_CHROME_STORE_ID");
/// The Firefox add-on id from `browser_specific_settings.gecko.id`.
pub const FIREFOX_EXTENSION_ID: &str = "peercache@peercache.org";

/// A supported browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Browser {
    /// Google Chrome.
    Chrome,
    /// Chromium.
    Chromium,
    /// Microsoft Edge.
    Edge,
    /// Brave.
    Brave,
    /// Vivaldi.
    Vivaldi,
    /// Firefox (and Firefox ESR).
    Firefox,
    /// LibreWolf.
    Librewolf,
}

/// How a browser was installed, as far as registering a host goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packaging {
    /// A normal install: it reads the manifests this module writes.
    Native,
    /// A Snap (`/snap/bin/NAME`).
    Snap(String),
    /// A Flatpak app (its id).
    Flatpak(String),
}

/// A browser found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Which browser.
    pub browser: Browser,
    /// How it was installed.
    pub packaging: Packaging,
}

impl Browser {
    /// Every supported browser.
    pub const ALL: [Browser; 7] = [
        Browser::Chrome,
        Browser::Chromium,
        Browser::Edge,
        Browser::Brave,
        Browser::Vivaldi,
        Browser::Firefox,
        Browser::Librewolf,
    ];

    /// The `native_messaging` table's key.
    pub fn key(self) -> &'static str {
        match self {
            Browser::Chrome => "chrome",
            Browser::Chromium => "chromium",
            Browser::Edge => "edge",
            Browser::Brave => "brave",
            Browser::Vivaldi => "vivaldi",
            Browser::Firefox => "firefox",
            Browser::Librewolf => "librewolf",
        }
    }

    /// The name people know it by.
    pub fn label(self) -> &'static str {
        match self {
            Browser::Chrome => "Google Chrome",
            Browser::Chromium => "Chromium",
            Browser::Edge => "Microsoft Edge",
            Browser::Brave => "Brave",
            Browser::Vivaldi => "Vivaldi",
            Browser::Firefox => "Firefox",
            Browser::Librewolf => "LibreWolf",
        }
    }

    /// Firefox-family (the manifest lists add-on ids) or Chromium-family
    /// (it lists extension origins).
    pub fn is_firefox_family(self) -> bool {
        matches!(self, Browser::Firefox | Browser::Librewolf)
    }

    /// Programs on `PATH` that start it (Linux).
    fn commands(self) -> &'static [&'static str] {
        match self {
            Browser::Chrome => &["google-chrome", "google-chrome-stable"],
            Browser::Chromium => &["chromium", "chromium-browser"],
            Browser::Edge => &["microsoft-edge", "microsoft-edge-stable"],
            Browser::Brave => &["brave-browser", "brave"],
            Browser::Vivaldi => &["vivaldi", "vivaldi-stable"],
            Browser::Firefox => &["firefox", "firefox-esr"],
            Browser::Librewolf => &["librewolf"],
        }
    }

    /// Snap names (Linux).
    fn snaps(self) -> &'static [&'static str] {
        match self {
            Browser::Chromium => &["chromium"],
            Browser::Firefox => &["firefox"],
            Browser::Brave => &["brave"],
            Browser::Vivaldi => &["vivaldi"],
            Browser::Chrome | Browser::Edge | Browser::Librewolf => &[],
        }
    }

    /// Flatpak app ids (Linux).
    fn flatpaks(self) -> &'static [&'static str] {
        match self {
            Browser::Chrome => &["com.google.Chrome"],
            Browser::Chromium => &["org.chromium.Chromium"],
            Browser::Edge => &["com.microsoft.Edge"],
            Browser::Brave => &["com.brave.Browser"],
            Browser::Vivaldi => &["com.vivaldi.Vivaldi"],
            Browser::Firefox => &["org.mozilla.firefox"],
            Browser::Librewolf => &["io.gitlab.librewolf-community"],
        }
    }

    /// Application bundles (macOS).
    fn mac_apps(self) -> &'static [&'static str] {
        match self {
            Browser::Chrome => &["Google Chrome.app"],
            Browser::Chromium => &["Chromium.app"],
            Browser::Edge => &["Microsoft Edge.app"],
            Browser::Brave => &["Brave Browser.app"],
            Browser::Vivaldi => &["Vivaldi.app"],
            Browser::Firefox => &["Firefox.app"],
            Browser::Librewolf => &["LibreWolf.app"],
        }
    }

    /// Profile folders under `%LOCALAPPDATA%` or `%APPDATA%` (Windows).
    fn windows_profiles(self) -> &'static [&'static str] {
        match self {
            Browser::Chrome => &["Google/Chrome/User Data"],
            Browser::Chromium => &["Chromium/User Data"],
            Browser::Edge => &["Microsoft/Edge/User Data"],
            Browser::Brave => &["BraveSoftware/Brave-Browser/User Data"],
            Browser::Vivaldi => &["Vivaldi/User Data"],
            Browser::Firefox => &["Mozilla/Firefox"],
            Browser::Librewolf => &["librewolf", "LibreWolf"],
        }
    }
}

/// Where to register.
#[derive(Debug, Clone)]
pub enum Scope {
    /// The current user's default profile locations.
    User,
    /// System-wide (needs root or an administrator).
    System,
    /// A custom Chromium-family profile directory.
    UserDataDir(PathBuf),
}

/// Installation errors.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// `--user-data-dir` given for a Firefox-family browser.
    #[error(
        "--user-data-dir applies to Chromium-family browsers; {0} reads the per-user or system-wide location"
    )]
    UserDataDirForFirefox(&'static str),
    /// The browser has no such location on this OS.
    #[error("{browser} has no {scope} native-messaging location on this system: {reason}")]
    NoLocation {
        /// The browser.
        browser: &'static str,
        /// "per-user" or "system-wide".
        scope: &'static str,
        /// Why.
        reason: String,
    },
    /// The extension id is not valid for the browser.
    #[error("invalid extension id {0:?}")]
    BadExtensionId(String),
    /// A file or registry operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file (or registry key).
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn nm_scope(scope: &Scope) -> native_messaging::Scope {
    match scope {
        Scope::System => native_messaging::Scope::System,
        _ => native_messaging::Scope::User,
    }
}

fn scope_name(scope: &Scope) -> &'static str {
    match scope {
        Scope::System => "system-wide",
        _ => "per-user",
    }
}

/// Where `browser` looks for the manifest in `scope` (first: where to write it).
pub fn manifest_paths(browser: Browser, scope: &Scope) -> Result<Vec<PathBuf>, InstallError> {
    if let Scope::UserDataDir(dir) = scope {
        if browser.is_firefox_family() {
            return Err(InstallError::UserDataDirForFirefox(browser.label()));
        }
        return Ok(vec![
            dir.join("NativeMessagingHosts")
                .join(format!("{HOST_NAME}.json")),
        ]);
    }
    native_messaging::manifest_paths(browser.key(), nm_scope(scope), HOST_NAME).map_err(|e| {
        InstallError::NoLocation {
            browser: browser.label(),
            scope: scope_name(scope),
            reason: e.to_string(),
        }
    })
}

/// The extension ids a Chromium-family manifest allows: the development id,
/// the store id when known, and `extra`.
pub fn chromium_ids(extra: &[String]) -> Vec<String> {
    let mut ids = vec![CHROMIUM_EXTENSION_ID.to_string()];
    ids.extend(CHROMIUM_STORE_EXTENSION_ID.map(str::to_string));
    ids.extend(extra.iter().cloned());
    ids.dedup();
    ids
}

fn valid_chromium_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| (b'a'..=b'p').contains(&b))
}

fn valid_firefox_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && !id.contains(['/', '"', ' ', '\\'])
}

/// The manifest's JSON for `browser`, pointing at `host_path` and allowing
/// `extension_ids`.
pub fn manifest(
    browser: Browser,
    host_path: &Path,
    extension_ids: &[String],
) -> Result<serde_json::Value, InstallError> {
    let mut m = json!({
        "name": HOST_NAME,
        "description": DESCRIPTION,
        "path": host_path,
        "type": "stdio",
    });
    if browser.is_firefox_family() {
        if let Some(bad) = extension_ids.iter().find(|id| !valid_firefox_id(id)) {
            return Err(InstallError::BadExtensionId(bad.clone()));
        }
        m["allowed_extensions"] = json!(extension_ids);
    } else {
        if let Some(bad) = extension_ids.iter().find(|id| !valid_chromium_id(id)) {
            return Err(InstallError::BadExtensionId(bad.clone()));
        }
        let origins: Vec<String> = extension_ids
            .iter()
            .map(|id| format!("chrome-extension://{id}/"))
            .collect();
        m["allowed_origins"] = json!(origins);
    }
    Ok(m)
}

fn ids_for(browser: Browser, extension_ids: &[String]) -> Vec<String> {
    if browser.is_firefox_family() {
        if extension_ids.is_empty() {
            vec![FIREFOX_EXTENSION_ID.to_string()]
        } else {
            extension_ids.to_vec()
        }
    } else {
        chromium_ids(extension_ids)
    }
}

/// Writes the manifest for `browser` (and on Windows its registry key); returns
/// the manifest's path. `extension_ids` adds to (Chromium) or replaces
/// (Firefox) peercache's own ids.
pub fn install(
    browser: Browser,
    scope: &Scope,
    host_path: &Path,
    extension_ids: &[String],
) -> Result<PathBuf, InstallError> {
    let ids = ids_for(browser, extension_ids);
    let body = manifest(browser, host_path, &ids)?;
    let path = manifest_paths(browser, scope)?
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoLocation {
            browser: browser.label(),
            scope: scope_name(scope),
            reason: "none configured".into(),
        })?;
    write_manifest(&path, &body)?;
    #[cfg(windows)]
    if !matches!(scope, Scope::UserDataDir(_)) {
        // The crate writes the same manifest and the registry key pointing at it.
        let origins: Vec<String> = ids
            .iter()
            .map(|id| format!("chrome-extension://{id}/"))
            .collect();
        let (origins, extensions): (&[String], &[String]) = if browser.is_firefox_family() {
            (&[], &ids)
        } else {
            (&origins, &[])
        };
        native_messaging::install(
            HOST_NAME,
            DESCRIPTION,
            host_path,
            origins,
            extensions,
            &[browser.key()],
            nm_scope(scope),
        )
        .map_err(|source| InstallError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(path)
}

fn write_manifest(path: &Path, body: &serde_json::Value) -> Result<(), InstallError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| InstallError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let text = serde_json::to_vec_pretty(body).unwrap_or_default();
    crate::cache::write_atomically(path, &text).map_err(|source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes the system-wide manifest of every browser that has a system-wide
/// location on this OS under `root` (e.g. `root/etc/chromium/native-messaging-hosts/…`),
/// pointing at `host_path`: what a package installs. Returns the paths written
/// (relative to `/`).
pub fn stage_system(root: &Path, host_path: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut written = Vec::new();
    for browser in Browser::ALL {
        let Ok(paths) = manifest_paths(browser, &Scope::System) else {
            continue;
        };
        let body = manifest(browser, host_path, &ids_for(browser, &[]))?;
        for path in paths {
            let relative = path
                .components()
                .filter(|c| matches!(c, std::path::Component::Normal(_)))
                .collect::<PathBuf>();
            if written.contains(&path) {
                continue;
            }
            write_manifest(&root.join(&relative), &body)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Removes the manifest (and on Windows the registry key); returns its path if
/// one was there.
pub fn uninstall(browser: Browser, scope: &Scope) -> Result<Option<PathBuf>, InstallError> {
    let mut removed = None;
    for path in manifest_paths(browser, scope)? {
        match std::fs::remove_file(&path) {
            Ok(()) => removed = removed.or(Some(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(InstallError::Io { path, source }),
        }
    }
    #[cfg(windows)]
    if !matches!(scope, Scope::UserDataDir(_)) {
        native_messaging::remove(HOST_NAME, &[browser.key()], nm_scope(scope)).map_err(
            |source| InstallError::Io {
                path: PathBuf::from(browser.key()),
                source,
            },
        )?;
    }
    Ok(removed)
}

/// What a registration looks like on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// A manifest names this host, its program exists, and it allows peercache.
    Ok(PathBuf),
    /// No manifest in the per-user or system-wide location.
    Missing,
    /// A manifest is there but something is wrong with it (said in words).
    Broken(PathBuf, String),
}

/// Checks `browser`'s registration (per-user first, then system-wide).
pub fn registration(browser: Browser) -> Registration {
    let mut paths = manifest_paths(browser, &Scope::User).unwrap_or_default();
    paths.extend(manifest_paths(browser, &Scope::System).unwrap_or_default());
    let mut broken = None;
    for path in paths {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        match check_manifest(browser, &bytes) {
            Ok(()) => return Registration::Ok(path),
            Err(why) => broken = broken.or(Some(Registration::Broken(path, why))),
        }
    }
    broken.unwrap_or(Registration::Missing)
}

/// Checks a manifest's text: this host's name, a program that exists, and
/// peercache's extension among those allowed.
pub fn check_manifest(browser: Browser, bytes: &[u8]) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("it is not valid JSON ({e})"))?;
    if v["name"] != HOST_NAME {
        return Err(format!("it names another host ({})", v["name"]));
    }
    let Some(program) = v["path"].as_str() else {
        return Err("it names no program".into());
    };
    if !Path::new(program).is_file() {
        return Err(format!("the program it names, {program}, does not exist"));
    }
    let allowed = if browser.is_firefox_family() {
        v["allowed_extensions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == FIREFOX_EXTENSION_ID))
    } else {
        v["allowed_origins"].as_array().is_some_and(|a| {
            a.iter().any(|x| {
                chromium_ids(&[])
                    .iter()
                    .any(|id| *x == format!("chrome-extension://{id}/"))
            })
        })
    };
    if !allowed {
        return Err("it does not allow peercache's extension".into());
    }
    Ok(())
}

/// The browsers installed on this machine, as far as can be told without
/// starting them.
pub fn detect() -> Vec<Found> {
    let mut found = Vec::new();
    for browser in Browser::ALL {
        if let Some(packaging) = detect_one(browser) {
            found.push(Found { browser, packaging });
        }
    }
    found
}

fn on_path(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(command))
        .find(|p| p.is_file())
}

fn detect_one(browser: Browser) -> Option<Packaging> {
    if cfg!(target_os = "macos") {
        let home = directories::BaseDirs::new().map(|b| b.home_dir().join("Applications"));
        let dirs = [Some(PathBuf::from("/Applications")), home];
        return browser
            .mac_apps()
            .iter()
            .any(|app| dirs.iter().flatten().any(|d| d.join(app).exists()))
            .then_some(Packaging::Native);
    }
    if cfg!(windows) {
        let roots: Vec<PathBuf> = ["LOCALAPPDATA", "APPDATA"]
            .iter()
            .filter_map(std::env::var_os)
            .map(PathBuf::from)
            .collect();
        return browser
            .windows_profiles()
            .iter()
            .any(|p| roots.iter().any(|r| r.join(p).exists()))
            .then_some(Packaging::Native);
    }
    // Linux and other Unix: a program on PATH that is not a Snap's.
    let native = browser
        .commands()
        .iter()
        .filter_map(|c| on_path(c))
        .any(|p| !is_snap_launcher(&p));
    if native {
        return Some(Packaging::Native);
    }
    if let Some(snap) = browser
        .snaps()
        .iter()
        .find(|s| Path::new("/snap").join(s).join("current").exists())
    {
        return Some(Packaging::Snap((*snap).to_string()));
    }
    let flatpak_roots: Vec<PathBuf> = [
        Some(PathBuf::from("/var/lib/flatpak/app")),
        directories::BaseDirs::new().map(|b| b.data_dir().join("flatpak").join("app")),
    ]
    .into_iter()
    .flatten()
    .collect();
    browser
        .flatpaks()
        .iter()
        .find(|id| flatpak_roots.iter().any(|r| r.join(id).exists()))
        .map(|id| Packaging::Flatpak((*id).to_string()))
}

/// A program under `/snap/bin` (or a link into it) is a Snap's launcher; so is
/// Ubuntu's `chromium-browser`/`firefox` wrapper that only calls the Snap.
fn is_snap_launcher(path: &Path) -> bool {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if path.starts_with("/snap") || target.starts_with("/snap") || target.ends_with("snap") {
        return true;
    }
    // Small shell wrappers that exec the Snap.
    std::fs::metadata(&target).is_ok_and(|m| m.len() < 4096)
        && std::fs::read(&target)
            .is_ok_and(|b| b.starts_with(b"#!") && b.windows(10).any(|w| w == b"/snap/bin/"))
}

/// What to tell a visitor whose browser came as a Snap or Flatpak.
pub fn sandbox_advice(found: &Found) -> Option<String> {
    match &found.packaging {
        Packaging::Native => None,
        Packaging::Snap(name) if found.browser == Browser::Firefox => Some(format!(
            "{} is the Snap `{name}`: it starts native hosts only through the desktop's \
             WebExtensions portal (recent Ubuntu with xdg-desktop-portal 1.17 or later). The \
             per-user registration is written; if the popup still says the host is missing, \
             install Firefox from Mozilla's .deb repository instead of the Snap.",
            found.browser.label()
        )),
        Packaging::Snap(name) => Some(format!(
            "{} is the Snap `{name}`: its sandbox does not let it start programs outside the \
             Snap, so it cannot reach peercache-host. Install {} from a .deb/.rpm package or \
             its maker's repository, then run `peercache-host install` again.",
            found.browser.label(),
            found.browser.label()
        )),
        Packaging::Flatpak(id) => Some(format!(
            "{} is the Flatpak `{id}`: its sandbox does not let it start programs outside it, \
             so it cannot reach peercache-host. Install {} from your distribution's packages or \
             its maker's repository, then run `peercache-host install` again.",
            found.browser.label(),
            found.browser.label()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_name_the_extension() {
        let ids = chromium_ids(&[]);
        let m = manifest(
            Browser::Chromium,
            Path::new("/usr/bin/peercache-host"),
            &ids,
        )
        .unwrap();
        assert_eq!(
            m["allowed_origins"][0],
            format!("chrome-extension://{CHROMIUM_EXTENSION_ID}/")
        );
        let f = manifest(
            Browser::Librewolf,
            Path::new("/x"),
            &ids_for(Browser::Librewolf, &[]),
        )
        .unwrap();
        assert_eq!(f["allowed_extensions"][0], FIREFOX_EXTENSION_ID);
        assert!(manifest(Browser::Edge, Path::new("/x"), &["short".into()]).is_err());
        assert!(manifest_paths(Browser::Firefox, &Scope::UserDataDir("/p".into())).is_err());
    }

    #[test]
    fn every_browser_has_a_per_user_location() {
        for browser in Browser::ALL {
            let paths = manifest_paths(browser, &Scope::User).unwrap();
            assert!(
                paths[0].ends_with(format!("{HOST_NAME}.json")),
                "{browser:?}: {paths:?}"
            );
        }
    }

    #[test]
    fn install_and_uninstall_in_a_profile() {
        let dir = std::env::temp_dir().join(format!("pc-install-{}", rand::random::<u64>()));
        let scope = Scope::UserDataDir(dir.clone());
        let exe = std::env::current_exe().unwrap();
        let path = install(Browser::Brave, &scope, &exe, &[]).unwrap();
        assert_eq!(
            path,
            dir.join("NativeMessagingHosts/org.peercache.host.json")
        );
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(check_manifest(Browser::Brave, &bytes), Ok(()));
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["path"], exe.to_str().unwrap());
        assert_eq!(
            uninstall(Browser::Brave, &scope).unwrap(),
            Some(path.clone())
        );
        assert!(!path.exists());
        assert_eq!(uninstall(Browser::Brave, &scope).unwrap(), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_broken_manifest_says_what_is_wrong() {
        let gone = br#"{"name":"org.peercache.host","path":"/nonexistent/peercache-host","allowed_origins":[]}"#;
        assert!(
            check_manifest(Browser::Chrome, gone)
                .unwrap_err()
                .contains("does not exist")
        );
        let exe = std::env::current_exe().unwrap();
        let other = json!({"name": HOST_NAME, "path": exe, "allowed_extensions": ["x@y"]});
        assert!(
            check_manifest(Browser::Firefox, other.to_string().as_bytes())
                .unwrap_err()
                .contains("does not allow")
        );
        assert!(check_manifest(Browser::Firefox, b"{").is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn staging_writes_the_system_wide_manifests_under_a_root() {
        let root = std::env::temp_dir().join(format!("pc-stage-{}", rand::random::<u64>()));
        let written = stage_system(&root, Path::new("/usr/bin/peercache-host")).unwrap();
        for want in [
            "/etc/opt/chrome/native-messaging-hosts/org.peercache.host.json",
            "/etc/chromium/native-messaging-hosts/org.peercache.host.json",
            "/usr/lib/mozilla/native-messaging-hosts/org.peercache.host.json",
        ] {
            assert!(
                written.contains(&PathBuf::from(want)),
                "{want}: {written:?}"
            );
            let text = std::fs::read_to_string(root.join(&want[1..])).unwrap();
            assert!(text.contains("/usr/bin/peercache-host"));
        }
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn sandboxed_browsers_get_advice() {
        let snap = Found {
            browser: Browser::Chromium,
            packaging: Packaging::Snap("chromium".into()),
        };
        assert!(sandbox_advice(&snap).unwrap().contains("Snap"));
        let native = Found {
            browser: Browser::Chromium,
            packaging: Packaging::Native,
        };
        assert_eq!(sandbox_advice(&native), None);
    }
}
