"""Engine replicas on a Ray Serve cluster, behind the same engine-client interface as the
in-process engine (``streamtts.engine_client``), so every transport runs unchanged:

* :mod:`.replica`: the Serve deployment. Each replica holds a batched engine core (the engine
  thread of the in-process client) and speaks one chunk per streaming call.
* :mod:`.router`: the Serve request router that sends a call to the replica with the most
  headroom (its live capacity minus its calls), and publishes the live replicas to this process.
* :mod:`.client`: :class:`~streamtts.cluster.client.ClusterEngineClient`: utterances cut into
  chunks here, each chunk a call, exact failover, explicit cancel, admission from the replicas.
* :mod:`.fronts`: the front ends' shares of the replicas' capacity, through the cluster's
  key-value store.
* :mod:`.metrics`: the cluster path's gauges on the front end's ``/metrics``.
* :mod:`.registry`: what this process's routers know of the replicas.
* :mod:`.local`: a loopback-only Ray head and the deployment, for ``streamtts serve --replicas N``.

Ray is the optional extra ``[cluster]``. Only this package imports it, and only when a cluster is
asked for: the base server never does.
"""

APP_NAME = "streamtts"  # the Serve application's name
DEPLOYMENT = "EngineReplica"  # the deployment's name
