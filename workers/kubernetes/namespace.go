package kubernetes

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/watch"
)

// ensureNamespace makes the user's namespace, its kernel service account
// and the role binding that gives it KernelClusterRole there. A namespace
// still being deleted (the user's previous last kernel) is waited out.
func (b *Backend) ensureNamespace(ctx context.Context, p placement) error {
	nss := b.client.CoreV1().Namespaces()
	meta := metav1.ObjectMeta{Name: p.Namespace, Labels: map[string]string{LabelManagedBy: ManagedBy, LabelPerUser: "true"}}
	for {
		ns, err := nss.Create(ctx, &corev1.Namespace{ObjectMeta: meta}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			ns, err = nss.Get(ctx, p.Namespace, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				continue
			}
		}
		if err != nil {
			return fmt.Errorf("namespace %s: %w", p.Namespace, err)
		}
		if ns.DeletionTimestamp == nil {
			break
		}
		if err := b.waitNamespaceGone(ctx, ns); err != nil {
			return err
		}
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: p.ServiceAccount, Namespace: p.Namespace, Labels: map[string]string{LabelManagedBy: ManagedBy}}}
	if _, err := b.client.CoreV1().ServiceAccounts(p.Namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("service account %s/%s: %w", p.Namespace, p.ServiceAccount, err)
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kernelbus-kernel", Namespace: p.Namespace, Labels: map[string]string{LabelManagedBy: ManagedBy}},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: p.ServiceAccount, Namespace: p.Namespace}},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: b.cfg.KernelClusterRole},
	}
	if _, err := b.client.RbacV1().RoleBindings(p.Namespace).Create(ctx, rb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("role binding %s/%s: %w", p.Namespace, rb.Name, err)
	}
	return nil
}

// waitNamespaceGone watches a terminating namespace until it is deleted.
func (b *Backend) waitNamespaceGone(ctx context.Context, ns *corev1.Namespace) error {
	b.log.Info().Str("namespace", ns.Name).Msg("waiting for the user's namespace to finish terminating")
	nss := b.client.CoreV1().Namespaces()
	sel := fields.OneTermEqualSelector("metadata.name", ns.Name).String()
	rv := ns.ResourceVersion
	for {
		w, err := nss.Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: rv})
		if err != nil {
			return fmt.Errorf("namespace %s is terminating: %w", ns.Name, err)
		}
		for e := range w.ResultChan() {
			if e.Type == watch.Deleted {
				w.Stop()
				return nil
			}
		}
		w.Stop()
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("namespace %s is still terminating: %w", ns.Name, err)
		}
		// The watch ended early: look again.
		cur, err := nss.Get(ctx, ns.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("namespace %s: %w", ns.Name, err)
		}
		rv = cur.ResourceVersion
	}
}

// removeNamespaceIfUnused deletes a per-user namespace once no kernel pod
// other than except is left in it.
func (b *Backend) removeNamespaceIfUnused(ctx context.Context, namespace, except string) {
	sel := labels.SelectorFromSet(labels.Set{LabelComponent: ComponentKernel, LabelManagedBy: ManagedBy}).String()
	pods, err := b.client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		b.log.Warn().Err(err).Str("namespace", namespace).Msg("could not list the namespace's kernel pods")
		return
	}
	for _, p := range pods.Items {
		if p.Name != except && p.DeletionTimestamp == nil {
			return
		}
	}
	ns, err := b.client.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{})
	if err != nil || ns.Labels[LabelPerUser] != "true" || ns.Labels[LabelManagedBy] != ManagedBy || ns.DeletionTimestamp != nil {
		return
	}
	uid := ns.UID
	err = b.client.CoreV1().Namespaces().Delete(ctx, namespace, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil && !apierrors.IsNotFound(err) {
		b.log.Warn().Err(err).Str("namespace", namespace).Msg("could not delete the user's namespace")
		return
	}
	b.log.Info().Str("namespace", namespace).Msg("deleted the user's namespace with their last kernel")
}

// isNamespaceTerminating reports the API server's refusal to create
// objects in a namespace being deleted.
func isNamespaceTerminating(err error) bool {
	return apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause)
}
