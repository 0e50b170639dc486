//! Secrets at rest. Webhook secrets must be readable by the server (it signs with them), so they
//! cannot be hashed like tokens; the store seals them with ChaCha20-Poly1305 under a key kept
//! apart from the database, and keeps the key's id beside each ciphertext.
//!
//! A [`Keyring`] holds the current key (every new seal uses it) and older keys still accepted for
//! opening, so a server holding both the old and the new key reads either while a rotation
//! re-seals everything under the new one. The ciphertext is bound to what it belongs to (the
//! webhook's id, as associated data): a sealed secret copied onto another row does not open.
//!
//! Text form of a keyring (a key file, or `JITGATE_SECRETS_KEY`): keys in unpadded base64url
//! (32 bytes each), separated by newlines, commas or spaces, the current one first; `#` starts a
//! comment.

use std::fmt;

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes in a key.
pub const KEY_LEN: usize = 32;

/// Why a secret could not be sealed or opened, or a key not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    /// The secret was sealed under a key the keyring does not hold.
    #[error("sealed under secrets key {key_id}, which is not among the keys given ({held})")]
    UnknownKey { key_id: String, held: String },
    /// The key id matches but the ciphertext does not open: damaged, or moved from another row.
    #[error("does not open with secrets key {key_id}: the stored ciphertext is damaged or was moved")]
    Damaged { key_id: String },
    /// A key's text is not 32 bytes of base64url.
    #[error("a secrets key must be {KEY_LEN} bytes in base64url (43 characters): {0}")]
    BadKey(String),
    #[error("a keyring needs at least one key")]
    Empty,
    #[error("the system's random number generator failed")]
    Random,
}

/// One 256-bit key and its id (derived from the key; it names the key without revealing it).
#[derive(Clone)]
pub struct SecretKey {
    id: String,
    bytes: [u8; KEY_LEN],
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.id)
    }
}

impl SecretKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let digest =
            ring::digest::digest(&ring::digest::SHA256, &[b"jitgate secrets key id\0".as_slice(), &bytes].concat());
        SecretKey { id: hex_prefix(digest.as_ref()), bytes }
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, SecretsError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut bytes).map_err(|_| SecretsError::Random)?;
        Ok(Self::from_bytes(bytes))
    }

    /// Reads a key from its text form.
    pub fn parse(text: &str) -> Result<Self, SecretsError> {
        let t = text.trim();
        let bytes = URL_SAFE_NO_PAD
            .decode(t.trim_end_matches('='))
            .or_else(|_| STANDARD_NO_PAD.decode(t.trim_end_matches('=')))
            .map_err(|_| SecretsError::BadKey("not base64".into()))?;
        let bytes: [u8; KEY_LEN] =
            bytes.try_into().map_err(|b: Vec<u8>| SecretsError::BadKey(format!("{} bytes", b.len())))?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key's text form.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.bytes)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn aead(&self) -> Result<LessSafeKey, SecretsError> {
        UnboundKey::new(&CHACHA20_POLY1305, &self.bytes)
            .map(LessSafeKey::new)
            .map_err(|_| SecretsError::BadKey("rejected by the cipher".into()))
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A sealed secret: the id of the key that sealed it, and nonce ‖ ciphertext ‖ tag in base64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub ciphertext: String,
}

/// The keys a store seals and opens secrets with: the current one first, then older ones still
/// accepted for opening.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<SecretKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keyring({})", self.ids().join(", "))
    }
}

impl Keyring {
    /// A keyring of `current` (used for every new seal) and `older` keys (opening only).
    pub fn new(current: SecretKey, older: Vec<SecretKey>) -> Self {
        let mut keys = vec![current];
        for k in older {
            if !keys.iter().any(|h| h.id == k.id) {
                keys.push(k);
            }
        }
        Keyring { keys }
    }

    /// A keyring of one fresh random key.
    pub fn generate() -> Result<Self, SecretsError> {
        Ok(Keyring { keys: vec![SecretKey::generate()?] })
    }

    /// Reads the text form: keys separated by newlines, commas or spaces, the current one first;
    /// `#` starts a comment that runs to the end of the line.
    pub fn parse(text: &str) -> Result<Self, SecretsError> {
        let mut keys = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            for word in line.split(|c: char| c == ',' || c.is_whitespace()).filter(|w| !w.is_empty()) {
                keys.push(SecretKey::parse(word)?);
            }
        }
        let mut keys = keys.into_iter();
        let current = keys.next().ok_or(SecretsError::Empty)?;
        Ok(Keyring::new(current, keys.collect()))
    }

    /// The text form, as a key file holds it.
    pub fn to_text(&self) -> String {
        let mut out = String::from(
            "# jitgate secrets keys: the first seals, the others are still accepted for opening.\n\
             # Keep this file away from the database and its backups (mode 0600).\n",
        );
        for k in &self.keys {
            out.push_str(&k.encode());
            out.push('\n');
        }
        out
    }

    pub fn current(&self) -> &SecretKey {
        &self.keys[0]
    }

    /// Every key, the current one first.
    pub fn keys(&self) -> &[SecretKey] {
        &self.keys
    }

    /// Every key's id, the current one first.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// Whether the keyring can open secrets sealed under `key_id`.
    pub fn holds(&self, key_id: &str) -> bool {
        self.keys.iter().any(|k| k.id == key_id)
    }

    /// Seals `plain` under the current key, bound to `context` (what it belongs to).
    pub fn seal(&self, plain: &str, context: &str) -> Result<Sealed, SecretsError> {
        let key = self.current();
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| SecretsError::Random)?;
        let mut data = plain.as_bytes().to_vec();
        key.aead()?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| SecretsError::Damaged { key_id: key.id.clone() })?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(Sealed { key_id: key.id.clone(), ciphertext: STANDARD_NO_PAD.encode(out) })
    }

    /// Opens a secret sealed under `key_id`, bound to `context`.
    pub fn open(&self, key_id: &str, ciphertext: &str, context: &str) -> Result<String, SecretsError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| SecretsError::UnknownKey { key_id: key_id.to_owned(), held: self.ids().join(", ") })?;
        let damaged = || SecretsError::Damaged { key_id: key_id.to_owned() };
        let raw = STANDARD_NO_PAD.decode(ciphertext).map_err(|_| damaged())?;
        if raw.len() < NONCE_LEN {
            return Err(damaged());
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| damaged())?;
        let mut data = sealed.to_vec();
        let plain =
            key.aead()?.open_in_place(nonce, Aad::from(context.as_bytes()), &mut data).map_err(|_| damaged())?;
        String::from_utf8(plain.to_vec()).map_err(|_| damaged())
    }
}

impl Keyring {
    /// Opens a stored secret: sealed under `key_id`, or (`None`) stored in the clear by a
    /// version from before secrets were sealed, which [`SealReport::reseal`] seals.
    pub fn open_stored(&self, key_id: Option<&str>, secret: &str, context: &str) -> Result<String, SecretsError> {
        match key_id {
            Some(key_id) => self.open(key_id, secret, context),
            None => Ok(secret.to_owned()),
        }
    }
}

/// What leaving every stored secret sealed under the current key did (at every open of a store).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SealReport {
    /// Secrets stored in the clear (by an earlier version) that are sealed now.
    pub sealed: usize,
    /// Secrets sealed under an older key, re-sealed under the current one.
    pub resealed: usize,
    /// Secrets already sealed under the current key (each was opened to prove the key right).
    pub current: usize,
}

impl SealReport {
    /// Decides for one stored secret of `context` (`secret`, sealed under `key_id`, or in the
    /// clear when `None`), and counts it: the secret sealed under the current key, to be stored
    /// in place of the old one, or `None` when it is current already (it is opened all the same,
    /// to prove the key right). A secret that does not open is an error naming the key.
    pub fn reseal(
        &mut self,
        keys: &Keyring,
        context: &str,
        secret: &str,
        key_id: Option<&str>,
    ) -> Result<Option<Sealed>, SecretsError> {
        let plain = keys.open_stored(key_id, secret, context)?;
        match key_id {
            Some(k) if k == keys.current().id() => {
                self.current += 1;
                return Ok(None);
            }
            Some(_) => self.resealed += 1,
            None => self.sealed += 1,
        }
        keys.seal(&plain, context).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::generate().expect("random")
    }

    #[test]
    fn sealed_secrets_open_with_their_key_and_context_only() {
        let k = ring();
        let s = k.seal("whsec_abcdef0123456789", "hook-1").expect("seal");
        assert_eq!(s.key_id, k.current().id());
        assert!(!s.ciphertext.contains("abcdef"), "no plaintext in the ciphertext");
        assert_eq!(k.open(&s.key_id, &s.ciphertext, "hook-1").expect("open"), "whsec_abcdef0123456789");
        assert_ne!(k.seal("x", "hook-1").expect("seal").ciphertext, k.seal("x", "hook-1").expect("seal").ciphertext);
        assert!(matches!(k.open(&s.key_id, &s.ciphertext, "hook-2"), Err(SecretsError::Damaged { .. })), "moved");
        let other = ring();
        assert!(matches!(other.open(&s.key_id, &s.ciphertext, "hook-1"), Err(SecretsError::UnknownKey { .. })));
        let mut flipped = s.ciphertext.clone().into_bytes();
        flipped[20] = if flipped[20] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).expect("ascii");
        assert!(matches!(k.open(&s.key_id, &flipped, "hook-1"), Err(SecretsError::Damaged { .. })));
    }

    #[test]
    fn a_keyring_with_old_and_new_keys_opens_both_and_seals_with_the_new() {
        let old = ring();
        let sealed_old = old.seal("old secret", "h").expect("seal");
        let both = Keyring::new(SecretKey::generate().expect("key"), vec![old.current().clone()]);
        assert_eq!(both.open(&sealed_old.key_id, &sealed_old.ciphertext, "h").expect("old opens"), "old secret");
        let sealed_new = both.seal("new secret", "h").expect("seal");
        assert_ne!(sealed_new.key_id, sealed_old.key_id);
        assert!(old.open(&sealed_new.key_id, &sealed_new.ciphertext, "h").is_err());
    }

    #[test]
    fn the_text_form_round_trips_and_bad_keys_are_named() {
        let k = Keyring::new(SecretKey::generate().expect("k"), vec![SecretKey::generate().expect("k")]);
        let back = Keyring::parse(&k.to_text()).expect("parse");
        assert_eq!(back.ids(), k.ids());
        let env = format!("{}, {}", k.keys[0].encode(), k.keys[1].encode());
        assert_eq!(Keyring::parse(&env).expect("comma-separated").ids(), k.ids());
        assert!(matches!(Keyring::parse("# nothing\n"), Err(SecretsError::Empty)));
        assert!(matches!(Keyring::parse("short"), Err(SecretsError::BadKey(_))));
        assert!(matches!(Keyring::parse("!!!!"), Err(SecretsError::BadKey(_))));
        assert!(!format!("{k:?}").contains(&k.keys[0].encode()), "Debug shows ids, not keys");
    }

    #[test]
    fn reseal_seals_clear_secrets_reseals_old_ones_and_counts_each() {
        let old = ring();
        let both = Keyring::new(SecretKey::generate().expect("key"), vec![old.current().clone()]);
        let mut report = SealReport::default();
        let clear = report.reseal(&both, "h1", "plain", None).expect("sealed").expect("a new seal");
        assert_eq!(both.open(&clear.key_id, &clear.ciphertext, "h1").expect("opens"), "plain");
        let under_old = old.seal("older", "h2").expect("seal");
        let resealed = report
            .reseal(&both, "h2", &under_old.ciphertext, Some(&under_old.key_id))
            .expect("re-sealed")
            .expect("a new seal");
        assert_eq!(resealed.key_id, both.current().id());
        assert_eq!(report.reseal(&both, "h1", &clear.ciphertext, Some(&clear.key_id)).expect("current"), None);
        assert_eq!(report, SealReport { sealed: 1, resealed: 1, current: 1 });
        let stranger = ring();
        assert!(matches!(
            report.reseal(&stranger, "h1", &clear.ciphertext, Some(&clear.key_id)),
            Err(SecretsError::UnknownKey { .. })
        ));
        assert_eq!(both.open_stored(None, "plain", "h1").expect("clear"), "plain");
    }
}
