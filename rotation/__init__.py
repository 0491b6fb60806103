"""cmk-rotator: keeps CMK-encrypted DocumentDB clusters on the newest key version.

The flow of one rotation, module by module:

    function_app.on_key_event     Event Grid delivers "a new key version"
    service.fanout                parse it (events), find the watched clusters of its key (store.watch)
    store.jobs                    one job per cluster on the queue (several per message past 32)
    function_app.rotate_cluster   the queue delivers a job
    service.worker                split a message of several (service.batch); claim the cluster
                                  (store.claims), resume or start (service.resume)
    engine                        the rules: decide, read the target version (azure.keyvault, key_rules)
    azure.arm                     PUT the encryption body (write_body), paced with every instance
                                  (azure.pacing, store.budget), follow the operation (azure.lro)
    engine                        GET and verify; store.registry records the outcome and the history
    service.reconcile             the timer's safety net: every watched cluster against its key's newest

The package:

    core        settings logs telemetry errors outcomes ids url_guard events engine rotation_job
                write_body key_rules collateral retry untrusted
    azure/      the adapters: transport pacing arm arm_connection arm_reads lro keyvault key_policy
                http_errors
    store/      Table and Queue storage: clients tables watch claims history registry budget jobs poison
    service/    what the Functions host runs: fanout worker batch resume registration reconcile http_api,
                and the process's clients (runtime, process, slots)
    serve/      `rotation serve`, the same service without the Functions host: daemon webhook
                queue_worker schedule timer_lease
    doctor/     the checks of a cluster's CMK chain: facts checks key_checks report fixes
    cli/        the operator CLI: main (parser) output (exit codes, formats) commands rotate

The rules the code cites ("rule 3"), the outcome vocabulary and the flow are in docs/design.md.
"""
