package io.kernelbus.yarn;

import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.lang.reflect.Field;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.StandardCopyOption;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.yarn.conf.YarnConfiguration;
import org.apache.hadoop.yarn.server.MiniYARNCluster;
import org.apache.hadoop.yarn.server.resourcemanager.ResourceManager;
import org.apache.hadoop.yarn.webapp.util.WebAppUtils;

/**
 * Starts a MiniYARNCluster on free ports and describes it for clients:
 *
 * <pre>
 *   java -cp harness.jar:lib/* io.kernelbus.yarn.Harness OUT_DIR [NM_MEMORY_MB] [MAX_ALLOC_MB]
 * </pre>
 *
 * OUT_DIR/conf gets yarn-site.xml and core-site.xml (HADOOP_CONF_DIR for
 * spark-submit), OUT_DIR/rm-web the ResourceManager's web address
 * (host:port), and OUT_DIR/ready appears last. The cluster stops when this
 * process gets SIGTERM or when its stdin closes, so a test that dies takes the
 * cluster with it.
 */
public final class Harness {
    public static void main(String[] args) throws Exception {
        if (args.length < 1) {
            System.err.println("usage: Harness OUT_DIR [NM_MEMORY_MB] [MAX_ALLOC_MB]");
            System.exit(2);
        }
        File out = new File(args[0]).getAbsoluteFile();
        int nmMemory = args.length > 1 ? Integer.parseInt(args[1]) : 6144;
        int maxAlloc = args.length > 2 ? Integer.parseInt(args[2]) : 4096;
        File conf = new File(out, "conf");
        if (!conf.mkdirs() && !conf.isDirectory()) {
            throw new IOException("cannot create " + conf);
        }

        // The relocated JAXB API (see pom.xml) must find the JAXB runtime that
        // hadoop-client-runtime carries under its shaded name.
        String factory = "org.apache.hadoop.shaded.com.sun.xml.bind.v2.ContextFactory";
        System.setProperty("javax.xml.bind.JAXBContextFactory", factory);
        System.setProperty("org.apache.hadoop.shaded.javax.xml.bind.JAXBContextFactory", factory);
        System.setProperty("javax.xml.bind.context.factory", factory);
        System.setProperty("org.apache.hadoop.shaded.javax.xml.bind.context.factory", factory);

        YarnConfiguration yc = new YarnConfiguration();
        // Every address on a free port of the loopback interface.
        yc.setBoolean(YarnConfiguration.YARN_MINICLUSTER_FIXED_PORTS, false);
        yc.set(YarnConfiguration.RM_BIND_HOST, "127.0.0.1");
        yc.set(YarnConfiguration.NM_BIND_HOST, "127.0.0.1");
        // Small containers: a PySpark driver and an executor fit on 2 cores.
        yc.setInt(YarnConfiguration.RM_SCHEDULER_MINIMUM_ALLOCATION_MB, 128);
        yc.setInt(YarnConfiguration.RM_SCHEDULER_MAXIMUM_ALLOCATION_MB, maxAlloc);
        yc.setInt(YarnConfiguration.NM_PMEM_MB, nmMemory);
        yc.setInt(YarnConfiguration.NM_VCORES, 8);
        yc.setInt(YarnConfiguration.RM_SCHEDULER_MAXIMUM_ALLOCATION_VCORES, 8);
        yc.setBoolean(YarnConfiguration.NM_PMEM_CHECK_ENABLED, false);
        yc.setBoolean(YarnConfiguration.NM_VMEM_CHECK_ENABLED, false);
        // One CapacityScheduler queue, "default", with the whole cluster (the
        // minicluster jar carries no capacity-scheduler.xml).
        yc.set("yarn.scheduler.capacity.root.queues", "default");
        yc.set("yarn.scheduler.capacity.root.default.capacity", "100");
        yc.set("yarn.scheduler.capacity.root.default.maximum-capacity", "100");
        // The whole cluster may hold application masters (the default 10%
        // leaves a PySpark driver ACCEPTED forever on a small node).
        yc.setFloat("yarn.scheduler.capacity.maximum-am-resource-percent", 1.0f);
        // A nearly full CI disk must not mark the only node unhealthy.
        yc.setFloat(YarnConfiguration.NM_MAX_PER_DISK_UTILIZATION_PERCENTAGE, 100.0f);
        yc.setLong(YarnConfiguration.NM_SLEEP_DELAY_BEFORE_SIGKILL_MS, 1000);
        yc.setInt(YarnConfiguration.RM_AM_MAX_ATTEMPTS, 1);
        yc.setLong("yarn.nodemanager.log.retain-seconds", 600);

        MiniYARNCluster cluster = new Cluster();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            System.err.println("harness: stopping the cluster");
            cluster.stop();
        }));
        cluster.init(yc);
        cluster.start();

        Configuration cc = cluster.getConfig();
        String web = WebAppUtils.getRMWebAppURLWithoutScheme(cc);
        // The NodeManager must have registered before clients submit.
        if (!cluster.waitForNodeManagersToConnect(60_000)) {
            throw new IOException("no NodeManager registered within 60s");
        }
        // Guice's servlet filter keeps its pipeline in a static field: the
        // NodeManager's web app, started after the ResourceManager's in the
        // same JVM, took it over, and /ws/v1/cluster answered 404. Give it
        // back to the ResourceManager (the NodeManager's web pages are not
        // needed).
        setGuicePipeline(rmPipeline);
        write(new File(conf, "yarn-site.xml"), cc);
        Configuration core = new Configuration(false);
        core.set("fs.defaultFS", "file:///");
        core.set("hadoop.tmp.dir", new File(out, "tmp").getPath());
        write(new File(conf, "core-site.xml"), core);
        writeString(new File(out, "rm-web"), web);
        writeString(new File(out, "ready"), "ok");
        System.err.println("harness: ready, ResourceManager web at http://" + web);

        // Parent gone (stdin closed) or SIGTERM: the hook stops the cluster.
        while (System.in.read() != -1) {
            // keep reading until EOF
        }
        System.err.println("harness: stdin closed");
        System.exit(0);
    }

    private static volatile Object rmPipeline;

    /** A MiniYARNCluster that notes the ResourceManager's Guice pipeline. */
    private static final class Cluster extends MiniYARNCluster {
        Cluster() {
            super("kernelbus", 1, 1, 1);
        }

        @Override
        protected ResourceManager createResourceManager() {
            return new ResourceManager() {
                @Override
                protected void doSecureLogin() {
                    // not secure: nothing to log in to
                }

                @Override
                protected void serviceStart() throws Exception {
                    super.serviceStart();
                    rmPipeline = guicePipelineField().get(null);
                }
            };
        }
    }

    private static Field guicePipelineField() throws ReflectiveOperationException {
        Class<?> gf = Class.forName("org.apache.hadoop.shaded.com.google.inject.servlet.GuiceFilter");
        Field f = gf.getDeclaredField("pipeline");
        f.setAccessible(true);
        return f;
    }

    private static void setGuicePipeline(Object p) throws ReflectiveOperationException {
        if (p == null) {
            throw new IllegalStateException("the ResourceManager's web pipeline was not captured");
        }
        guicePipelineField().set(null, p);
    }

    private static void write(File f, Configuration c) throws IOException {
        File tmp = new File(f.getPath() + ".tmp");
        try (OutputStream os = new FileOutputStream(tmp)) {
            c.writeXml(os);
        }
        Files.move(tmp.toPath(), f.toPath(), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    }

    private static void writeString(File f, String s) throws IOException {
        File tmp = new File(f.getPath() + ".tmp");
        Files.write(tmp.toPath(), s.getBytes(StandardCharsets.UTF_8));
        Files.move(tmp.toPath(), f.toPath(), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    }
}
