package frontend

import (
	"io/fs"
	"mime"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/kernelbus/kernelbus/broker"
	"github.com/kernelbus/kernelbus/frontend/auth"
)

// specModel is one entry of GET /api/kernelspecs, in the shape
// jupyter_server and JupyterLab validate: spec.argv always an array,
// env and metadata always objects.
type specModel struct {
	Name      string            `json:"name"`
	Spec      specBody          `json:"spec"`
	Resources map[string]string `json:"resources"`
}

type specBody struct {
	Argv          []string          `json:"argv"`
	DisplayName   string            `json:"display_name"`
	Language      string            `json:"language"`
	InterruptMode string            `json:"interrupt_mode"`
	Env           map[string]string `json:"env"`
	Metadata      map[string]any    `json:"metadata"`
}

func (s *Server) specModel(k *broker.KernelSpec) specModel {
	m := specModel{
		Name: k.Name,
		Spec: specBody{
			Argv: k.Argv, DisplayName: k.DisplayName, Language: k.Language,
			InterruptMode: k.InterruptMode, Env: k.Env, Metadata: k.Metadata,
		},
		Resources: map[string]string{},
	}
	if m.Spec.Argv == nil {
		m.Spec.Argv = []string{}
	}
	if m.Spec.InterruptMode == "" {
		m.Spec.InterruptMode = "signal"
	}
	if m.Spec.Env == nil {
		m.Spec.Env = map[string]string{}
	}
	if m.Spec.Metadata == nil {
		m.Spec.Metadata = map[string]any{}
	}
	// jupyter_server keeps what follows the last "/kernelspecs/" of each
	// URL and fetches it from us at /kernelspecs/{name}/{file}.
	for key, file := range k.Resources {
		m.Resources[key] = s.cfg.BaseURL + "kernelspecs/" + k.Name + "/" + file
	}
	return m
}

// specUser is the user whose authorization (JEG's authorized_users)
// filters the specs shown: the caller itself, or for an identity that may
// act for others the ?user= it names, as JEG's apply_user_filter does.
// An administrator naming nobody sees every spec.
func specUser(c *fiber.Ctx, user string) (string, bool) {
	who := identityOf(c)
	if who.Has(auth.RoleImpersonate) || who.IsAdmin() {
		return user, user != ""
	}
	return who.Name, true
}

func (s *Server) listSpecs(c *fiber.Ctx) error {
	// jupyter_server with KERNEL_USERNAME set asks for one spec as
	// /api/kernelspecs?user=alice/python3; answer the spec it means.
	if u := c.Query("user"); strings.Contains(u, "/") {
		return s.oneSpec(c, u[strings.LastIndex(u, "/")+1:], u[:strings.LastIndex(u, "/")])
	}
	user, filter := specUser(c, c.Query("user"))
	specs := s.specs.Specs()
	out := make(map[string]specModel, len(specs))
	names := make([]string, 0, len(specs))
	for _, k := range specs {
		if filter && s.authorize(k, user) != nil {
			continue
		}
		out[k.Name] = s.specModel(k)
		names = append(names, k.Name)
	}
	def := s.specs.Default()
	if _, ok := out[def]; !ok && len(names) > 0 {
		sort.Strings(names)
		def = names[0]
	}
	return c.JSON(fiber.Map{"default": def, "kernelspecs": out})
}

func (s *Server) getSpec(c *fiber.Ctx) error {
	return s.oneSpec(c, c.Params("name"), c.Query("user"))
}

// oneSpec answers one spec; one the user may not start is 403, as in JEG.
func (s *Server) oneSpec(c *fiber.Ctx, name, user string) error {
	k, ok := s.specs.Spec(name)
	if !ok {
		return broker.Errorf(broker.ErrSpecNotFound, "Kernel spec %s not found", name)
	}
	if user, filter := specUser(c, user); filter {
		if err := s.authorize(k, user); err != nil {
			return err
		}
	}
	return c.JSON(s.specModel(k))
}

// getSpecFile serves a file of a kernelspec's resource directory (logos,
// kernel.js), never anything outside it.
func (s *Server) getSpecFile(c *fiber.Ctx) error {
	name := c.Params("name")
	file := c.Params("*")
	k, ok := s.specs.Spec(name)
	if !ok || k.Dir == "" {
		return broker.Errorf(broker.ErrSpecNotFound, "Kernel spec %s not found", name)
	}
	notFound := broker.Errorf(broker.ErrNotFound, "Kernel spec %s has no resource %s", name, file)
	if !fs.ValidPath(file) || file == "." || strings.Contains(file, "\\") {
		return notFound
	}
	// Resolve symlinks on both sides so a link cannot lead outside.
	root, err := filepath.EvalSymlinks(k.Dir)
	if err != nil {
		return notFound
	}
	full, err := filepath.EvalSymlinks(filepath.Join(root, filepath.FromSlash(file)))
	if err != nil || !strings.HasPrefix(full, root+string(filepath.Separator)) {
		return notFound
	}
	if st, err := os.Stat(full); err != nil || !st.Mode().IsRegular() {
		return notFound
	}
	data, err := os.ReadFile(full)
	if err != nil {
		return notFound
	}
	ct := mime.TypeByExtension(path.Ext(file))
	if ct == "" {
		ct = fiber.MIMEOctetStream
	}
	c.Set(fiber.HeaderContentType, ct)
	if strings.HasSuffix(file, ".png") || strings.HasSuffix(file, ".svg") {
		c.Set(fiber.HeaderCacheControl, "max-age=2592000") // logos: 30 days, as jupyter_server
	}
	return c.Send(data)
}
