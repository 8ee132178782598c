from vagent.services.call_controller.service import main

main()
