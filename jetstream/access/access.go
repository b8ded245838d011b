// Package access says who may do what on the bus, and hands out the NATS
// credentials that enforce it.
//
// kernelbus uses NATS's decentralized authorization (an operator, accounts
// and user JWTs signed with nkeys) because it is the one mechanism that
// works the same for the embedded server of `kernelbus serve` and for a NATS
// cluster an operator already runs, needs no service to be up when a
// client (re)connects (auth callout would make every launcher reconnect
// depend on a gateway process answering), and lets a worker mint a
// kernel's credentials offline. The installation has one account, KB. Its
// identity key signs the role credentials of front-ends, workers and admin
// tools (each with the permissions of its row in the threat model). A
// second, *scoped* signing key of the account signs launcher credentials:
// the server itself applies the scope's template to every user that key
// signs, with the user's name (the kernel id) substituted, so the workers
// that hold that key can mint credentials for one kernel at a time and
// nothing broader, whatever they write into the user JWT.
//
// A launcher's credentials allow exactly its own kernel's subjects: its
// output and events, its control subject, its own record and activity keys
// (by direct get and publish, never a stream or consumer listing), pulls
// from the input consumer a worker created for it, and its own reply
// inboxes. It can create no consumer: a push consumer's deliver subject is
// not checked against the creator's permissions, so that right alone would
// let a kernel make the server publish into another kernel's subjects.
//
// Launcher credentials expire (DefaultLauncherCredsTTL) and are renewed
// over SubjectRenew by the workers only while the kernel runs, which is
// how they stop working after the kernel ends (renew.go). The bus speaks
// TLS with a private CA (WriteTLS) that every client verifies.
package access

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/kernelbus/kernelbus/broker"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// Roles of bus users.
const (
	// RoleAdmin may do everything: set up streams, read the audit log,
	// run operator tools. `kernelbus serve` sets up with it.
	RoleAdmin = "admin"
	// RoleFrontend publishes requests, relays websockets, reads and writes
	// records, sessions and events; it cannot claim requests.
	RoleFrontend = "frontend"
	// RoleWorker claims the requests of one resource manager, writes
	// records and trusted handles, and creates launchers' input consumers.
	RoleWorker = "worker"
	// RoleLauncher is one kernel's launcher: see the package comment.
	RoleLauncher = "launcher"
)

// AccountName is the name of the kernelbus account in JWTs.
const AccountName = "KB"

// InboxPrefix, InputConsumer and WorkerConsumer are the bus's names
// (broker/subjects.go), here for the permission tables.
var (
	InboxPrefix    = broker.InboxPrefix
	InputConsumer  = broker.InputConsumer
	WorkerConsumer = broker.WorkerConsumer
)

// SubjectRenew is where a launcher asks for fresh credentials before its
// own expire: kb.creds.<kernel>. Workers answer while the kernel lives.
func SubjectRenew(kernelID string) string { return "kb.creds." + kernelID }

// SubjectRenewAll is what workers serve.
const SubjectRenewAll = "kb.creds.*"

// name is the template placeholder for the user's name (the kernel id).
const name = "{{name()}}"

// kvSubject is the subject a KV key is stored under.
func kvSubject(bucket, key string) string { return "$KV." + bucket + "." + key }

// LauncherTemplate is the permission template of the launcher signing key.
func LauncherTemplate() jwt.UserPermissionLimits {
	var l jwt.UserPermissionLimits
	l.Pub.Allow = jwt.StringList{
		broker.SubjectOutAll(name),
		broker.SubjectEvent(name, ">"),
		kvSubject(broker.BucketKernels, name),
		kvSubject(broker.BucketActivity, name),
		"$JS.API.DIRECT.GET.KV_" + broker.BucketKernels + "." + kvSubject(broker.BucketKernels, name),
		"$JS.API.CONSUMER.INFO." + broker.StreamIO + "." + InputConsumer(name),
		"$JS.API.CONSUMER.MSG.NEXT." + broker.StreamIO + "." + InputConsumer(name),
		"$JS.ACK." + broker.StreamIO + "." + InputConsumer(name) + ".>",
		SubjectRenew(name),
	}
	l.Sub.Allow = jwt.StringList{
		// Its own client input, live (core NATS), as front-ends publish
		// it to the stream (kbjs.KernelLink.ConsumeInput).
		broker.SubjectIn(name),
		broker.SubjectControl(name),
		kvSubject(broker.BucketKernels, name),
		InboxPrefix(name) + ".>",
	}
	// Replies to control requests go to the requester's inbox.
	l.Resp = &jwt.ResponsePermission{MaxMsgs: 1, Expires: time.Minute}
	l.Limits = jwt.Limits{
		UserLimits: jwt.UserLimits{},
		NatsLimits: jwt.NatsLimits{Subs: jwt.NoLimit, Data: jwt.NoLimit, Payload: jwt.NoLimit},
	}
	return l
}

// knownRMs are the resource managers this build knows; a worker of one is
// denied the others' request consumers by name.
// The build pool (environments) counts as one: it claims build requests.
var knownRMs = []string{broker.RMLocal, broker.RMSSH, broker.RMYarn, broker.RMKubernetes, broker.RMBuild}

// jsAdminOnly are JetStream API calls no role but admin makes.
var jsAdminOnly = []string{
	"$JS.API.STREAM.DELETE.>",
	"$JS.API.STREAM.PURGE.>",
	"$JS.API.STREAM.MSG.DELETE.>",
	"$JS.API.STREAM.RESTORE.>",
	"$JS.API.STREAM.SNAPSHOT.>",
	"$JS.API.ACCOUNT.PURGE.>",
	"$JS.API.SERVER.>",
	"$JS.API.META.>",
}

// requestConsumerCalls are the JetStream API subjects that create, bind or
// pull a consumer of KB_REQUESTS named c (or, for creates, filtered on
// filter).
func requestConsumerCalls(c string) []string {
	s := broker.StreamRequests
	return []string{
		"$JS.API.CONSUMER.CREATE." + s + "." + c,
		"$JS.API.CONSUMER.CREATE." + s + "." + c + ".>",
		"$JS.API.CONSUMER.DURABLE.CREATE." + s + "." + c,
		"$JS.API.CONSUMER.MSG.NEXT." + s + "." + c,
		"$JS.ACK." + s + "." + c + ".>",
	}
}

// Permissions returns the permissions of a role user; rm names the
// resource manager of a worker.
func Permissions(role, rm string) (jwt.Permissions, error) {
	var p jwt.Permissions
	switch role {
	case RoleAdmin:
		return p, nil // no restriction
	case RoleFrontend:
		p.Pub.Allow = jwt.StringList{">"}
		p.Pub.Deny = append(jwt.StringList{
			// Claiming requests is the workers' job; a front-end cannot
			// bind or create a consumer of the request queue at all.
			"$JS.API.CONSUMER.*." + broker.StreamRequests + ".>",
			"$JS.API.CONSUMER.*." + broker.StreamRequests,
			"$JS.API.CONSUMER.MSG.NEXT." + broker.StreamRequests + ".>",
			"$JS.API.CONSUMER.DURABLE.CREATE." + broker.StreamRequests + ".>",
			"$JS.ACK." + broker.StreamRequests + ".>",
			// Handles are the workers' record of what they started.
			kvSubject(broker.BucketHandles, ">"),
			SubjectRenewAll,
		}, jsAdminOnly...)
		// kb.io.*.out.>: live kernel output (core NATS), which the
		// front-end relays anyway; no other role subscribes to it.
		p.Sub.Allow = jwt.StringList{"_INBOX.>", "kb.fe.>", broker.SubjectOutAll("*")}
	case RoleWorker:
		if !validRM(rm) {
			return p, fmt.Errorf("worker credentials: resource manager %q is not a name", rm)
		}
		p.Pub.Allow = jwt.StringList{">"}
		deny := append(jwt.StringList{
			// A worker starts nothing on its own: start requests come
			// from clients through front-ends. (Its duties may ask for
			// stops.)
			broker.SubjectRequest(broker.VerbStart, "*"),
			// Nor does it ask for environment builds: users do, through
			// front-ends that validated the request.
			broker.SubjectRequest(broker.VerbBuild, "*"),
			// Consumers of the request queue are created by name only
			// (the name-less and name-only forms carry the filter in
			// the body, which permissions cannot see).
			"$JS.API.CONSUMER.CREATE." + broker.StreamRequests,
			"$JS.API.CONSUMER.CREATE." + broker.StreamRequests + ".*",
		}, jsAdminOnly...)
		for _, other := range knownRMs {
			if other == rm {
				continue
			}
			deny = append(deny, requestConsumerCalls(WorkerConsumer(other))...)
			deny = append(deny, "$JS.API.CONSUMER.CREATE."+broker.StreamRequests+".*."+broker.SubjectRequestsFor(other))
		}
		p.Pub.Deny = deny
		// Launchers' inboxes and live input too: a worker without a
		// minter hands its own credentials to its launchers, which
		// reply-subscribe there and take their input live. (A worker
		// may read KB_IO through the JetStream API anyway.)
		p.Sub.Allow = jwt.StringList{"_INBOX.>", InboxPrefix("*") + ".>", SubjectRenewAll, broker.SubjectIn("*")}
	default:
		return p, fmt.Errorf("no bus role %q", role)
	}
	return p, nil
}

var rmName = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)

func validRM(rm string) bool { return rmName.MatchString(rm) }

var kernelIDRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// ValidKernelID reports whether id is a lower-case UUID, the only form a
// launcher credential is minted for (it becomes a subject token).
func ValidKernelID(id string) bool { return kernelIDRE.MatchString(id) }

// Installation holds the keys of one kernelbus installation: the operator,
// the system account, the kernelbus account and its launcher signing key.
// Whoever holds it can mint every credential: `kernelbus serve` keeps it in
// its data folder (0700/0600), an operator's cluster keeps it with the
// admin.
type Installation struct {
	OperatorSeed string `json:"operator_seed"`
	SystemSeed   string `json:"system_seed"`
	AccountSeed  string `json:"account_seed"`
	LauncherSeed string `json:"launcher_signing_seed"`
}

// Generate makes a new installation.
func Generate() (*Installation, error) {
	var in Installation
	for _, x := range []struct {
		dst *string
		gen func() (nkeys.KeyPair, error)
	}{
		{&in.OperatorSeed, nkeys.CreateOperator},
		{&in.SystemSeed, nkeys.CreateAccount},
		{&in.AccountSeed, nkeys.CreateAccount},
		{&in.LauncherSeed, nkeys.CreateAccount},
	} {
		kp, err := x.gen()
		if err != nil {
			return nil, err
		}
		seed, err := kp.Seed()
		if err != nil {
			return nil, err
		}
		*x.dst = string(seed)
	}
	return &in, nil
}

// InstallationFile is the file in an auth folder that holds the keys.
const InstallationFile = "installation.json"

// LoadOrGenerate reads dir/installation.json, or makes a new installation
// and writes it there (the folder 0700, the file 0600).
func LoadOrGenerate(dir string) (*Installation, error) {
	p := filepath.Join(dir, InstallationFile)
	b, err := os.ReadFile(p)
	if err == nil {
		var in Installation
		if err := json.Unmarshal(b, &in); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if _, err := in.keys(); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		return &in, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	in, err := Generate()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	b, _ = json.MarshalIndent(in, "", "  ")
	if err := writeFileAtomic(p, b, 0o600); err != nil {
		return nil, err
	}
	return in, nil
}

func writeFileAtomic(p string, b []byte, mode os.FileMode) error {
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

type keys struct {
	operator, system, account, launcher nkeys.KeyPair
}

func (in *Installation) keys() (*keys, error) {
	var k keys
	for _, x := range []struct {
		seed string
		dst  *nkeys.KeyPair
		pfx  nkeys.PrefixByte
	}{
		{in.OperatorSeed, &k.operator, nkeys.PrefixByteOperator},
		{in.SystemSeed, &k.system, nkeys.PrefixByteAccount},
		{in.AccountSeed, &k.account, nkeys.PrefixByteAccount},
		{in.LauncherSeed, &k.launcher, nkeys.PrefixByteAccount},
	} {
		kp, err := nkeys.FromSeed([]byte(x.seed))
		if err != nil {
			return nil, fmt.Errorf("bad key seed: %w", err)
		}
		pub, _ := kp.PublicKey()
		if !nkeys.IsValidPublicKey(pub) || nkeys.Prefix(pub) != x.pfx {
			return nil, fmt.Errorf("key %s is of the wrong kind", pub)
		}
		*x.dst = kp
	}
	return &k, nil
}

func pub(kp nkeys.KeyPair) string { s, _ := kp.PublicKey(); return s }

// JWTs are the operator's and accounts' claims, what a server trusts.
type JWTs struct {
	Operator, System, Account string
	// SystemKey and AccountKey are the accounts' public keys.
	SystemKey, AccountKey string
}

// JWTs signs the operator and account claims.
func (in *Installation) JWTs() (*JWTs, error) {
	k, err := in.keys()
	if err != nil {
		return nil, err
	}
	oc := jwt.NewOperatorClaims(pub(k.operator))
	oc.Name = "kernelbus"
	oc.SystemAccount = pub(k.system)
	ojwt, err := oc.Encode(k.operator)
	if err != nil {
		return nil, err
	}
	sc := jwt.NewAccountClaims(pub(k.system))
	sc.Name = "SYS"
	sjwt, err := sc.Encode(k.operator)
	if err != nil {
		return nil, err
	}
	ac := jwt.NewAccountClaims(pub(k.account))
	ac.Name = AccountName
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1, MaxAckPending: -1, MemoryMaxStreamBytes: -1, DiskMaxStreamBytes: -1}
	scope := jwt.NewUserScope()
	scope.Key = pub(k.launcher)
	scope.Role = RoleLauncher
	scope.Description = "one kernel's launcher: {{name()}} is the kernel id"
	scope.Template = LauncherTemplate()
	ac.SigningKeys.AddScopedSigner(scope)
	ajwt, err := ac.Encode(k.operator)
	if err != nil {
		return nil, err
	}
	return &JWTs{Operator: ojwt, System: sjwt, Account: ajwt, SystemKey: pub(k.system), AccountKey: pub(k.account)}, nil
}

// ServerConfig is the part of a nats-server configuration file that makes
// a server (or every node of a cluster) trust this installation.
func (in *Installation) ServerConfig() (string, error) {
	j, err := in.JWTs()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "operator: %q\nsystem_account: %s\nresolver: MEMORY\nresolver_preload: {\n", j.Operator, j.SystemKey)
	fmt.Fprintf(&b, "  %s: %q\n  %s: %q\n}\n", j.SystemKey, j.System, j.AccountKey, j.Account)
	return b.String(), nil
}

// Creds returns a credentials file (JWT and seed) for a role user named
// userName; rm names a worker's resource manager. ttl 0 never expires.
func (in *Installation) Creds(role, rm, userName string, ttl time.Duration) ([]byte, error) {
	if role == RoleLauncher {
		return nil, errors.New("launcher credentials are minted per kernel (Minter)")
	}
	k, err := in.keys()
	if err != nil {
		return nil, err
	}
	perms, err := Permissions(role, rm)
	if err != nil {
		return nil, err
	}
	ukp, err := nkeys.CreateUser()
	if err != nil {
		return nil, err
	}
	uc := jwt.NewUserClaims(pub(ukp))
	uc.Name = userName
	uc.Permissions = perms
	uc.Tags.Add("role:" + role)
	if ttl > 0 {
		uc.Expires = time.Now().Add(ttl).Unix()
	}
	ujwt, err := uc.Encode(k.account)
	if err != nil {
		return nil, err
	}
	seed, _ := ukp.Seed()
	return jwt.FormatUserConfig(ujwt, seed)
}

// Minter mints launcher credentials. Workers hold one: it has only the
// launcher signing key, whose scope the server enforces.
type Minter struct {
	signer  nkeys.KeyPair
	account string
}

// Minter returns the installation's launcher minter.
func (in *Installation) Minter() (*Minter, error) {
	k, err := in.keys()
	if err != nil {
		return nil, err
	}
	return &Minter{signer: k.launcher, account: pub(k.account)}, nil
}

// MinterFile is the file holding what a worker needs to mint launcher
// credentials: the scoped signing key's seed and the account's public key.
type MinterFile struct {
	Account string `json:"account"`
	Seed    string `json:"launcher_signing_seed"`
}

// MinterFile returns the contents of a minter file for workers.
func (in *Installation) MinterFile() ([]byte, error) {
	k, err := in.keys()
	if err != nil {
		return nil, err
	}
	return json.MarshalIndent(MinterFile{Account: pub(k.account), Seed: in.LauncherSeed}, "", "  ")
}

// LoadMinter reads a minter file.
func LoadMinter(path string) (*Minter, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f MinterFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	kp, err := nkeys.FromSeed([]byte(f.Seed))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if !nkeys.IsValidPublicKey(f.Account) || nkeys.Prefix(f.Account) != nkeys.PrefixByteAccount {
		return nil, fmt.Errorf("%s: account %q is not an account public key", path, f.Account)
	}
	return &Minter{signer: kp, account: f.Account}, nil
}

// Launcher mints credentials for kernel kernelID's launcher, valid for ttl
// (0: no expiry). It returns the user JWT and the user's nkey seed.
func (m *Minter) Launcher(kernelID string, ttl time.Duration) (userJWT, seed string, err error) {
	if !ValidKernelID(kernelID) {
		return "", "", fmt.Errorf("launcher credentials: kernel id %q is not a UUID", kernelID)
	}
	ukp, err := nkeys.CreateUser()
	if err != nil {
		return "", "", err
	}
	uc := jwt.NewUserClaims(pub(ukp))
	uc.Name = kernelID
	uc.IssuerAccount = m.account
	// A user signed by a scoped key carries no permissions of its own:
	// the server applies the key's template.
	uc.UserPermissionLimits = jwt.UserPermissionLimits{}
	uc.Tags.Add("role:" + RoleLauncher)
	if ttl > 0 {
		uc.Expires = time.Now().Add(ttl).Unix()
	}
	userJWT, err = uc.Encode(m.signer)
	if err != nil {
		return "", "", err
	}
	s, _ := ukp.Seed()
	return userJWT, string(s), nil
}

// LauncherCreds is Launcher as the contents of a credentials file.
func (m *Minter) LauncherCreds(kernelID string, ttl time.Duration) (string, error) {
	j, s, err := m.Launcher(kernelID, ttl)
	if err != nil {
		return "", err
	}
	return string(formatCreds(j, s)), nil
}

// formatCreds writes a credentials file's contents: the user JWT and the
// nkey seed, each between marker lines, as jwt.ParseDecoratedJWT and
// ParseDecoratedNKey (and nats.go's creds loader) read them.
// jwt.FormatUserConfig writes the same but first decodes the JWT, checking
// the signature just made: at 200 concurrent starts that check was 45 % of
// minting a launcher's credentials in serve's profile.
func formatCreds(userJWT, seed string) []byte {
	var b strings.Builder
	b.Grow(len(userJWT) + len(seed) + 160)
	b.WriteString("-----BEGIN NATS USER JWT-----\n")
	b.WriteString(userJWT)
	b.WriteString("\n------END NATS USER JWT------\n\n")
	b.WriteString("Keep what follows secret: it proves the identity above.\n\n")
	b.WriteString("-----BEGIN USER NKEY SEED-----\n")
	b.WriteString(seed)
	b.WriteString("\n------END USER NKEY SEED------\n")
	return []byte(b.String())
}

// Files in an auth folder (WriteFiles).
const (
	// AdminCreds, FrontendCreds are role credentials files.
	AdminCreds    = "admin.creds"
	FrontendCreds = "frontend.creds"
	// MinterFileName holds what workers need to mint launcher credentials.
	MinterFileName = "launcher-minter.json"
	// ServerConfFile is the nats-server configuration include.
	ServerConfFile = "nats-server-auth.conf"
)

// WorkerCreds is the credentials file of resource manager rm's workers.
func WorkerCreds(rm string) string { return "worker-" + rm + ".creds" }

// WriteFiles writes into dir (0700) what the parts of an installation
// need, each file 0600: the installation's keys (installation.json, kept
// by whoever runs LoadOrGenerate), the server configuration include, the
// admin's, front-ends' and each known resource manager's workers'
// credentials, and the workers' launcher minter. Role credentials do not
// expire: revoke them by making a new installation.
func WriteFiles(dir string, in *Installation) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	conf, err := in.ServerConfig()
	if err != nil {
		return err
	}
	files := map[string][]byte{ServerConfFile: []byte(conf)}
	if files[MinterFileName], err = in.MinterFile(); err != nil {
		return err
	}
	if files[AdminCreds], err = in.Creds(RoleAdmin, "", "kernelbus-admin", 0); err != nil {
		return err
	}
	if files[FrontendCreds], err = in.Creds(RoleFrontend, "", "kernelbus-frontend", 0); err != nil {
		return err
	}
	for _, rm := range knownRMs {
		if files[WorkerCreds(rm)], err = in.Creds(RoleWorker, rm, "kernelbus-worker-"+rm, 0); err != nil {
			return err
		}
	}
	for name, b := range files {
		if err := writeFileAtomic(filepath.Join(dir, name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}
