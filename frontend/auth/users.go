package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// A users file is JSON that `kernelbus users` writes:
//
//	{"users": [{"name": "alice", "roles": ["user"],
//	            "tokens": [{"id": "3f9a01c2", "sha256": "<hex>", "created": "..."}],
//	            "password": "<bcrypt>"}]}
//
// API tokens are 32 random bytes, so a single SHA-256 stores them safely and
// is cheap enough to check on every request. Passwords are chosen by people,
// so they get bcrypt; a successful basic-auth check is remembered for a short
// while (keyed by a digest of user and password), because jupyter_server
// sends basic credentials with every request and websocket.

// UsersFileVersion is the format written by this build.
const UsersFileVersion = 1

// UserRecord is one user of a users file.
type UserRecord struct {
	Name     string        `json:"name"`
	Roles    []string      `json:"roles,omitempty"`
	Tokens   []TokenRecord `json:"tokens,omitempty"`
	Password string        `json:"password,omitempty"` // bcrypt
}

// TokenRecord is a stored API token.
type TokenRecord struct {
	ID      string    `json:"id"`     // a short name to tell tokens apart
	SHA256  string    `json:"sha256"` // hex digest of the token
	Created time.Time `json:"created"`
}

// UsersDB is the contents of a users file.
type UsersDB struct {
	Version int          `json:"version"`
	Users   []UserRecord `json:"users"`
}

var userNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$`)

// ValidUserName accepts names that are safe as KERNEL_USERNAME, in a basic
// auth header (no colon) and in logs.
func ValidUserName(name string) bool { return userNameRE.MatchString(name) }

var knownRoles = []string{RoleUser, RoleAdmin, RoleImpersonate}

// ReadUsersFile reads a users file; a missing file is an empty one.
func ReadUsersFile(path string) (*UsersDB, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &UsersDB{Version: UsersFileVersion}, nil
	}
	if err != nil {
		return nil, err
	}
	return parseUsers(path, data)
}

func parseUsers(path string, data []byte) (*UsersDB, error) {
	var db UsersDB
	if err := json.Unmarshal(data, &db); err != nil {
		return nil, fmt.Errorf("users file %s: not valid JSON: %w", path, err)
	}
	if db.Version > UsersFileVersion {
		return nil, fmt.Errorf("users file %s: version %d is newer than this kernelbus understands (%d)", path, db.Version, UsersFileVersion)
	}
	seen := map[string]bool{}
	for i, u := range db.Users {
		if !ValidUserName(u.Name) {
			return nil, fmt.Errorf("users file %s: user %d: name %q must be letters, digits, . _ @ - (at most 128)", path, i, u.Name)
		}
		if seen[u.Name] {
			return nil, fmt.Errorf("users file %s: user %s appears twice", path, u.Name)
		}
		seen[u.Name] = true
		for _, r := range u.Roles {
			if !slices.Contains(knownRoles, r) {
				return nil, fmt.Errorf("users file %s: user %s: unknown role %q (use %v)", path, u.Name, r, knownRoles)
			}
		}
		for _, t := range u.Tokens {
			if b, err := hex.DecodeString(t.SHA256); err != nil || len(b) != sha256.Size {
				return nil, fmt.Errorf("users file %s: user %s: token %s: sha256 must be 64 hex digits", path, u.Name, t.ID)
			}
		}
	}
	return &db, nil
}

// Write saves db to path atomically (a new file renamed over the old one),
// readable by its owner only.
func (db *UsersDB) Write(path string) error {
	db.Version = UsersFileVersion
	sort.Slice(db.Users, func(i, j int) bool { return db.Users[i].Name < db.Users[j].Name })
	data, err := json.MarshalIndent(db, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename there is nothing to remove
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(append(data, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// User returns the user called name, or nil.
func (db *UsersDB) User(name string) *UserRecord {
	for i := range db.Users {
		if db.Users[i].Name == name {
			return &db.Users[i]
		}
	}
	return nil
}

// Add adds a user with roles (RoleUser when none).
func (db *UsersDB) Add(name string, roles []string) error {
	if !ValidUserName(name) {
		return fmt.Errorf("user name %q: use letters, digits, . _ @ - (at most 128, no leading punctuation)", name)
	}
	if db.User(name) != nil {
		return fmt.Errorf("user %s exists already", name)
	}
	if len(roles) == 0 {
		roles = []string{RoleUser}
	}
	for _, r := range roles {
		if !slices.Contains(knownRoles, r) {
			return fmt.Errorf("unknown role %q: use %v", r, knownRoles)
		}
	}
	db.Users = append(db.Users, UserRecord{Name: name, Roles: slices.Compact(slices.Sorted(slices.Values(roles)))})
	return nil
}

// Remove removes a user.
func (db *UsersDB) Remove(name string) error {
	for i := range db.Users {
		if db.Users[i].Name == name {
			db.Users = slices.Delete(db.Users, i, i+1)
			return nil
		}
	}
	return fmt.Errorf("no user %s", name)
}

// NewToken gives user name a new API token and returns it: it is stored
// as a digest only, so this is the one time it can be shown.
func (db *UsersDB) NewToken(name string) (string, error) {
	u := db.User(name)
	if u == nil {
		return "", fmt.Errorf("no user %s", name)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	// The prefix lets secret scanners recognise a leaked token.
	tok := "kbu_" + base64.RawURLEncoding.EncodeToString(raw)
	sum := sha256.Sum256([]byte(tok))
	u.Tokens = append(u.Tokens, TokenRecord{ID: hex.EncodeToString(sum[:4]), SHA256: hex.EncodeToString(sum[:]), Created: time.Now().UTC().Truncate(time.Second)})
	return tok, nil
}

// SetPassword sets (or, with "", clears) user name's basic-auth password.
func (db *UsersDB) SetPassword(name, password string) error {
	u := db.User(name)
	if u == nil {
		return fmt.Errorf("no user %s", name)
	}
	if password == "" {
		u.Password = ""
		return nil
	}
	if len(password) < 8 {
		return errors.New("the password is too short: use at least 8 characters")
	}
	if len(password) > 72 {
		return errors.New("the password is too long: bcrypt uses at most 72 bytes")
	}
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	if err != nil {
		return err
	}
	u.Password = string(h)
	return nil
}

// UsersSource proves identities from a users file, which it reads again
// when it changes (checked at most every UsersReloadEvery).
type UsersSource struct {
	path string
	ttl  time.Duration

	mu      sync.Mutex
	idx     *usersIndex
	mtime   time.Time
	size    int64
	checked time.Time
	loadErr error
	// cache remembers successful basic-auth checks:
	// sha256(user NUL password) -> user name and expiry.
	cache map[[sha256.Size]byte]cached
}

type cached struct {
	name string
	exp  time.Time
}

type usersIndex struct {
	byName  map[string]*UserRecord
	byToken map[[sha256.Size]byte]*UserRecord
}

var _ Source = (*UsersSource)(nil)

// UsersReloadEvery bounds how stale a users file's contents may be.
const UsersReloadEvery = time.Second

// BasicCacheTTL is how long a successful basic-auth check is remembered
// (a changed file forgets them all at once).
const BasicCacheTTL = time.Minute

const basicCacheCap = 10000

// dummyHash is compared against when a basic-auth user does not exist, so
// that the answer takes as long as for one that does.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("kernelbus: no such user"), bcrypt.DefaultCost)

// NewUsersSource reads the users file at path; it must exist and be valid
// at start, later a broken edit keeps the last good contents.
func NewUsersSource(path string) (*UsersSource, error) {
	s := &UsersSource{path: path, ttl: BasicCacheTTL}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("users file: %w (create it with `kernelbus users add --file %s NAME`)", err, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("users file: %w", err)
	}
	db, err := parseUsers(path, data)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("users file %s: others may read it (mode %o); chmod 600 it", path, st.Mode().Perm())
	}
	s.install(db, st, time.Now())
	return s, nil
}

func (s *UsersSource) install(db *UsersDB, st os.FileInfo, now time.Time) {
	idx := &usersIndex{byName: map[string]*UserRecord{}, byToken: map[[sha256.Size]byte]*UserRecord{}}
	for i := range db.Users {
		u := &db.Users[i]
		idx.byName[u.Name] = u
		for _, t := range u.Tokens {
			var k [sha256.Size]byte
			if b, err := hex.DecodeString(t.SHA256); err == nil && len(b) == sha256.Size {
				copy(k[:], b)
				idx.byToken[k] = u
			}
		}
	}
	s.idx, s.mtime, s.size, s.checked, s.loadErr = idx, st.ModTime(), st.Size(), now, nil
	s.cache = map[[sha256.Size]byte]cached{}
}

// current returns the index, reading the file again if it changed.
func (s *UsersSource) current(now time.Time) *usersIndex {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.checked) < UsersReloadEvery {
		return s.idx
	}
	s.checked = now
	st, err := os.Stat(s.path)
	if err != nil {
		s.loadErr = err
		return s.idx
	}
	if st.ModTime().Equal(s.mtime) && st.Size() == s.size {
		return s.idx
	}
	data, err := os.ReadFile(s.path)
	if err == nil {
		var db *UsersDB
		if db, err = parseUsers(s.path, data); err == nil {
			s.install(db, st, now)
			return s.idx
		}
	}
	// Keep serving the last good contents; LoadError tells why.
	s.loadErr = err
	return s.idx
}

// LoadError is why the last reload of the file failed, or nil.
func (s *UsersSource) LoadError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loadErr
}

// Name implements Source.
func (s *UsersSource) Name() string { return "users" }

func identityOfUser(u *UserRecord) *Identity {
	roles := u.Roles
	if len(roles) == 0 {
		roles = []string{RoleUser}
	}
	return &Identity{Name: u.Name, Roles: slices.Clone(roles), Source: "users"}
}

// Authenticate implements Source: an API token (token, bearer, ?token=),
// or basic auth with the user's password or one of the user's tokens as
// the password (jupyter_server's http_user/http_pwd).
func (s *UsersSource) Authenticate(r Request) (*Identity, error) {
	c := ReadCredentials(r)
	now := time.Now()
	idx := s.current(now)
	switch {
	case c.Token != "":
		if u := idx.byToken[sha256.Sum256([]byte(c.Token))]; u != nil {
			return identityOfUser(u), nil
		}
		return nil, fmt.Errorf("%w: the token is not valid", ErrUnauthorized)
	case c.Basic:
		return s.basic(idx, c.User, c.Password, now)
	}
	return nil, nil
}

var errBadBasic = fmt.Errorf("%w: the user name or password is not valid", ErrUnauthorized)

func (s *UsersSource) basic(idx *usersIndex, name, password string, now time.Time) (*Identity, error) {
	if password == "" {
		return nil, errBadBasic
	}
	u := idx.byName[name]
	if u != nil {
		if t := idx.byToken[sha256.Sum256([]byte(password))]; t == u {
			return identityOfUser(u), nil
		}
	}
	key := sha256.Sum256([]byte(name + "\x00" + password))
	s.mu.Lock()
	hit, ok := s.cache[key]
	s.mu.Unlock()
	if ok && now.Before(hit.exp) && u != nil && hit.name == u.Name {
		return identityOfUser(u), nil
	}
	hash := dummyHash
	if u != nil && u.Password != "" {
		hash = []byte(u.Password)
	}
	if bcrypt.CompareHashAndPassword(hash, []byte(password)) != nil || u == nil || u.Password == "" {
		return nil, errBadBasic
	}
	s.mu.Lock()
	if len(s.cache) >= basicCacheCap {
		clear(s.cache)
	}
	s.cache[key] = cached{name: u.Name, exp: now.Add(s.ttl)}
	s.mu.Unlock()
	return identityOfUser(u), nil
}
