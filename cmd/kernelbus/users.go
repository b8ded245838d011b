package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/kernelbus/kernelbus/frontend/auth"
)

const usersUsage = `kernelbus users: manage a users file (--users-file of serve and frontend)

Usage:
  kernelbus users add    --file F [--role user,admin,impersonate] NAME   add a user and print a first API token
  kernelbus users token  --file F NAME                                   print a new API token for NAME
  kernelbus users passwd --file F NAME    set NAME's password (HTTP basic) from the first line of stdin
  kernelbus users list   --file F
  kernelbus users remove --file F NAME

Tokens are printed once: the file keeps only their SHA-256. The running
gateways read the file again when it changes. --file defaults to $KB_USERS_FILE.
`

// cmdUsers manages a users file. Every change is written atomically with
// mode 0600, so a gateway reading it sees the old or the new contents.
func cmdUsers(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usersUsage)
		return errUsage
	}
	verb := args[0]
	fs := newFlagSet("users "+verb, stderr)
	file := fs.String("file", os.Getenv("KB_USERS_FILE"), "the users file")
	var roles listFlag
	if verb == "add" {
		fs.Var(&roles, "role", "roles of the new user: user, admin, impersonate (repeatable; default user)")
	}
	// Flags may come before or after the name.
	var pos []string
	rest := args[1:]
	for {
		if err := fs.Parse(rest); err != nil {
			return errUsage
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if *file == "" {
		return errors.New("users: --file is required (or set KB_USERS_FILE)")
	}
	wantName := map[string]bool{"add": true, "token": true, "passwd": true, "remove": true, "list": false}
	need, ok := wantName[verb]
	if !ok {
		fmt.Fprintf(stderr, "kernelbus users: unknown command %q\n\n%s", verb, usersUsage)
		return errUsage
	}
	if need && len(pos) != 1 || !need && len(pos) != 0 {
		return fmt.Errorf("users %s: expected %s, got %q", verb, map[bool]string{true: "one user name", false: "no arguments"}[need], pos)
	}
	db, err := auth.ReadUsersFile(*file)
	if err != nil {
		return err
	}
	switch verb {
	case "list":
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tROLES\tTOKENS\tPASSWORD")
		for _, u := range db.Users {
			ids := make([]string, 0, len(u.Tokens))
			for _, t := range u.Tokens {
				ids = append(ids, t.ID)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%v\n", u.Name, strings.Join(u.Roles, ","), strings.Join(ids, ","), u.Password != "")
		}
		return tw.Flush()
	case "add":
		if err := db.Add(pos[0], roles); err != nil {
			return err
		}
		return newTokenAndSave(db, *file, pos[0], stdout)
	case "token":
		return newTokenAndSave(db, *file, pos[0], stdout)
	case "passwd":
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		pw := strings.TrimRight(line, "\r\n")
		if pw == "" {
			return errors.New("users passwd: write the password on stdin (an empty one is not set)")
		}
		if err := db.SetPassword(pos[0], pw); err != nil {
			return err
		}
		return db.Write(*file)
	case "remove":
		if err := db.Remove(pos[0]); err != nil {
			return err
		}
		return db.Write(*file)
	}
	return nil
}

func newTokenAndSave(db *auth.UsersDB, file, name string, stdout io.Writer) error {
	tok, err := db.NewToken(name)
	if err != nil {
		return err
	}
	if err := db.Write(file); err != nil {
		return err
	}
	// Only the token on stdout, so scripts can capture it.
	_, err = fmt.Fprintln(stdout, tok)
	return err
}
