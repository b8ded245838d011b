package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/kernelbus/kernelbus/frontend/auth"
	"github.com/rs/zerolog"
)

// identityFlags choose the identity sources besides the users file and the
// shared token: JupyterHub, an authenticating proxy's headers, and TLS
// client certificates.
type identityFlags struct {
	hubURL, hubToken, hubTokenFile, hubScope string
	hubAdminGroups                           listFlag
	proxyCIDRs, proxyAdminGroups             listFlag
	userHeader, groupsHeader                 string
	certField                                string
	certAdmins                               listFlag
}

func (f *identityFlags) register(fs *flagSet) {
	fs.StringVar(&f.hubURL, "hub-api-url", "", "JupyterHub REST API (http://hub:8081/hub/api): accept tokens the Hub issued, as their users")
	fs.StringVar(&f.hubToken, "hub-api-token", "", "this gateway's own Hub service token, checked at startup (prefer --hub-api-token-file)")
	fs.StringVar(&f.hubTokenFile, "hub-api-token-file", "", "file holding --hub-api-token")
	fs.StringVar(&f.hubScope, "hub-impersonate-scope", auth.DefaultImpersonateScope, "Hub scope whose holders may start kernels for other users (KERNEL_USERNAME)")
	fs.Var(&f.hubAdminGroups, "hub-admin-groups", "Hub groups whose members are gateway admins (besides Hub admins)")
	fs.Var(&f.proxyCIDRs, "trusted-proxy-cidrs", "addresses of an authenticating proxy (CIDRs or IPs, comma separated) whose user header is believed; from anyone else it is ignored")
	fs.StringVar(&f.userHeader, "trusted-user-header", auth.DefaultUserHeader, "header the trusted proxy puts the user name in")
	fs.StringVar(&f.groupsHeader, "trusted-groups-header", "", "header the trusted proxy puts the user's groups in (comma separated)")
	fs.Var(&f.proxyAdminGroups, "trusted-admin-groups", "groups (from --trusted-groups-header) whose members are gateway admins")
	fs.StringVar(&f.certField, "tls-client-cert-user-field", auth.CertFieldCN, "client certificate field that names the user: cn, email, dns or uri")
	fs.Var(&f.certAdmins, "tls-client-cert-admins", "user names (from client certificates) that are gateway admins")
}

// identitySources builds the identity sources the flags ask for, in the
// order the front-end asks them after the users file and the shared token:
// JupyterHub, the trusted proxy header, the TLS client certificate. None
// is an empty list. A Hub that does not answer at startup is only a
// warning: it may start after the gateway, and until it does its users
// get 503.
func identitySources(ff *frontendFlags, log zerolog.Logger) ([]auth.Source, error) {
	f := &ff.ident
	var out []auth.Source
	if f.hubURL != "" {
		tok, err := f.hubAPIToken()
		if err != nil {
			return nil, err
		}
		hub, err := auth.NewHubSource(auth.HubConfig{
			APIURL: f.hubURL, APIToken: tok, ImpersonateScope: f.hubScope, AdminGroups: f.hubAdminGroups,
		})
		if err != nil {
			return nil, fmt.Errorf("--hub-api-url: %w", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = hub.Check(ctx)
		cancel()
		switch {
		case errors.Is(err, auth.ErrUnavailable):
			log.Warn().Err(err).Msg("JupyterHub not reachable yet; its users get 503 until it is")
		case err != nil:
			return nil, err
		}
		out = append(out, hub)
	} else if f.hubToken != "" || f.hubTokenFile != "" {
		return nil, errors.New("--hub-api-token needs --hub-api-url")
	}
	if len(f.proxyCIDRs) > 0 {
		h, err := auth.NewHeaderSource(auth.HeaderConfig{
			TrustedCIDRs: f.proxyCIDRs, UserHeader: f.userHeader, GroupsHeader: f.groupsHeader, AdminGroups: f.proxyAdminGroups,
		})
		if err != nil {
			return nil, fmt.Errorf("--trusted-proxy-cidrs: %w", err)
		}
		out = append(out, h)
	} else if f.groupsHeader != "" || len(f.proxyAdminGroups) > 0 {
		return nil, errors.New("--trusted-groups-header and --trusted-admin-groups need --trusted-proxy-cidrs, the proxy's addresses")
	}
	if ff.tls.clientCA != "" {
		c, err := auth.NewCertSource(f.certField, f.certAdmins)
		if err != nil {
			return nil, fmt.Errorf("--tls-client-cert-user-field: %w", err)
		}
		out = append(out, c)
	} else if len(f.certAdmins) > 0 {
		return nil, errors.New("--tls-client-cert-admins needs --tls-client-ca (client certificates)")
	}
	return out, nil
}

func (f *identityFlags) hubAPIToken() (string, error) {
	return secretFlag("--hub-api-token", f.hubToken, f.hubTokenFile)
}

// secretFlag is the secret given to flag name either inline (value) or,
// out of every process listing (/proc/<pid>/cmdline is world-readable),
// in the file name+"-file" names (file), which must not be empty.
func secretFlag(name, value, file string) (string, error) {
	if file == "" {
		return value, nil
	}
	if value != "" {
		return "", fmt.Errorf("give %s or %s-file, not both", name, name)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%s-file: %w", name, err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%s-file %s is empty", name, file)
	}
	return tok, nil
}
